/* test_b64url.c - unit tests of base64url without padding: RFC 4648's vectors, JOSE's example,
 * and the strictness that gives each byte string exactly one encoding. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "b64url.h"

static void
round_trip(const char *bytes, size_t len, const char *text)
{
    char enc[64];
    unsigned char dec[64];
    assert_int_equal(b64url_encode((const unsigned char *)bytes, len, enc, sizeof(enc)),
                     (long)strlen(text));
    assert_string_equal(enc, text);
    assert_int_equal(b64url_decode(text, strlen(text), dec, sizeof(dec)), (long)len);
    assert_memory_equal(dec, bytes, len);
}

/* RFC 4648 section 10, in the URL alphabet without the padding (RFC 7515 section 2). */
static void
test_rfc4648_section10_vectors_without_padding(void **state)
{
    (void)state;
    round_trip("", 0, "");
    round_trip("f", 1, "Zg");
    round_trip("fo", 2, "Zm8");
    round_trip("foo", 3, "Zm9v");
    round_trip("foob", 4, "Zm9vYg");
    round_trip("fooba", 5, "Zm9vYmE");
    round_trip("foobar", 6, "Zm9vYmFy");
}

/* RFC 7515 appendix C: the octets 3, 236, 255, 224, 193 are "A-z_4ME" ('-' and '_' are the URL
 * alphabet's 62 and 63). */
static void
test_rfc7515_appendix_c_url_alphabet(void **state)
{
    (void)state;
    round_trip("\x03\xec\xff\xe0\xc1", 5, "A-z_4ME");
}

static void
refused(const char *text)
{
    unsigned char dec[64];
    if (b64url_decode(text, strlen(text), dec, sizeof(dec)) >= 0)
        fail_msg("\"%s\" was decoded", text);
}

/* One spelling per byte string: padding, the standard alphabet's '+' and '/', white space,
 * a dangling character and non-zero unused bits are all refused. */
static void
test_decoding_is_strict(void **state)
{
    (void)state;
    refused("Zg==");     /* padding */
    refused("Zg=");      /* padding */
    refused("+_8");      /* '+' is standard base64 */
    refused("A/z");      /* '/' too */
    refused("Zm9v Yg");  /* white space */
    refused("Zm9v\nYg"); /* a line break */
    refused("Z");        /* 6 bits: no byte */
    refused("Zm9vY");    /* length 1 modulo 4 */
    refused("Zh");       /* "Zg" with its 4 unused bits not zero */
    refused("Zm9");      /* "Zm8" with its 2 unused bits not zero */
}

static void
test_capacity_is_respected(void **state)
{
    (void)state;
    unsigned char dec[2];
    char enc[4];
    assert_int_equal(b64url_decode("Zm9v", 4, dec, sizeof(dec)), -1);
    assert_int_equal(b64url_decode("Zm8", 3, dec, sizeof(dec)), 2);
    assert_int_equal(b64url_encode((const unsigned char *)"foo", 3, enc, sizeof(enc)), -1);
    assert_int_equal(B64URL_ENCODED_LEN(3), 4);
    assert_int_equal(B64URL_ENCODED_LEN(5), 7);
    assert_true(B64URL_DECODED_MAX(7) >= 5);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc4648_section10_vectors_without_padding),
        cmocka_unit_test(test_rfc7515_appendix_c_url_alphabet),
        cmocka_unit_test(test_decoding_is_strict),
        cmocka_unit_test(test_capacity_is_respected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
