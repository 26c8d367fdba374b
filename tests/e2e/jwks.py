"""JWKs of the tests' public keys, written as RFC 7518 says.

PyJWT before 2.8 (Debian 12 has 2.6) writes an EC coordinate that starts with a zero byte one
byte short, and a verifier must refuse that: RFC 7518 section 6.2.1.2 (and 6.2.1.3) wants
the full size of a coordinate for the curve. One P-256 key in about 128 has such an x or y,
so a test that let PyJWT write its key set failed about that often."""

import base64
import json

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ec_coordinates(public_key):
    """x and y of an EC public key, each the full size of a coordinate of its curve."""
    size = (public_key.curve.key_size + 7) // 8
    n = public_key.public_numbers()
    return n.x.to_bytes(size, "big"), n.y.to_bytes(size, "big")


def public_jwk(key, **members):
    """The public JWK of a private key (RSA, EC or Ed25519), with members added."""
    pub = key.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        x, y = ec_coordinates(pub)
        j = {"kty": "EC", "crv": CURVES[pub.curve.name], "x": b64(x), "y": b64(y)}
    elif isinstance(pub, rsa.RSAPublicKey):
        j = json.loads(RSAAlgorithm.to_jwk(pub))
    else:
        j = json.loads(OKPAlgorithm.to_jwk(pub))
    j.update(members)
    return j
