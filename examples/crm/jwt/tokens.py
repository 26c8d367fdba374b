#!/usr/bin/python3
"""Keys and tokens for the CRM example with JWT identity (examples/crm/jwt/policies).

  tokens.py keys             make a signing key (private/, never committed) if there is
                             none, and write its public half to policies/jwks.json
  tokens.py rotate           make a new signing key; jwks.json then holds the new key and
                             the previous one (tokens of both verify until the next rotate)
  tokens.py mint SUB PLAN [ORG] [--ttl SECONDS]
                             print a token for users.id SUB on PLAN (and tenant ORG)

Needs Debian's python3-jwt and python3-cryptography (scripts/deps.sh test)."""

import argparse
import base64
import json
import os
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = os.path.dirname(os.path.abspath(__file__))
PRIVATE = os.path.join(HERE, "private")  # --private DIR elsewhere
ISSUER, AUDIENCE = "https://auth.crm.example", "crm"


def key_files():
    """The signing keys, oldest first: private/KID.pem."""
    if not os.path.isdir(PRIVATE):
        return []
    return sorted((f for f in os.listdir(PRIVATE) if f.endswith(".pem")),
                  key=lambda f: os.path.getmtime(os.path.join(PRIVATE, f)))


def load(name):
    with open(os.path.join(PRIVATE, name), "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def new_key():
    os.makedirs(PRIVATE, mode=0o700, exist_ok=True)
    kid = "crm-%d" % int(time.time() * 1000)
    k = ec.generate_private_key(ec.SECP256R1())
    path = os.path.join(PRIVATE, kid + ".pem")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    return kid


def public_jwk(key, kid):
    """The P-256 public key's JWK, each coordinate its full 32 bytes (RFC 7518 section
    6.2.1.2): PyJWT before 2.8 drops a leading zero byte, about one key in 128, and a
    verifier must refuse that."""
    n = key.public_key().public_numbers()

    def b64(v):
        return base64.urlsafe_b64encode(v.to_bytes(32, "big")).rstrip(b"=").decode()

    return {"kty": "EC", "crv": "P-256", "x": b64(n.x), "y": b64(n.y), "kid": kid,
            "alg": "ES256", "use": "sig"}


def write_jwks(policy_dir, names):
    keys = [public_jwk(load(name), name[:-4]) for name in names]
    tmp = os.path.join(policy_dir, ".jwks.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"keys": keys}, f, indent=2)
    os.replace(tmp, os.path.join(policy_dir, "jwks.json"))  # one change: one reload


def main():
    global PRIVATE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--policies", default=os.path.join(HERE, "policies"),
                    help="the policy directory to write jwks.json in")
    ap.add_argument("--private", default=PRIVATE, help="where the signing keys are kept")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("keys")
    sub.add_parser("rotate")
    m = sub.add_parser("mint")
    m.add_argument("sub")
    m.add_argument("plan")
    m.add_argument("org", nargs="?")
    m.add_argument("--ttl", type=int, default=3600)
    a = ap.parse_args()
    PRIVATE = a.private
    if a.cmd in ("keys", "rotate"):
        if a.cmd == "rotate" or not key_files():
            new_key()
        write_jwks(a.policies, key_files()[-2:])
        return
    names = key_files()
    if not names:
        sys.exit("no signing key: run tokens.py keys first")
    now = int(time.time())
    claims = {"sub": a.sub, "plan": a.plan, "iss": ISSUER, "aud": AUDIENCE, "iat": now,
              "exp": now + a.ttl}
    if a.org:
        claims["org"] = a.org
    print(jwt.encode(claims, load(names[-1]), algorithm="ES256", headers={"kid": names[-1][:-4]}))


if __name__ == "__main__":
    main()
