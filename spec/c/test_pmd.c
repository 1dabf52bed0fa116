/*
 * test_pmd.c -- permessage-deflate negotiation (RFC 7692) in
 * core/ws/ws_handshake.c (mg_ws_negotiate_pmd): which offer is taken, the
 * window bits, the context-takeover flags, the answer line, and the
 * offers that are declined; and the token lists the handshake checks
 * (mg_ws_token_in, over base/'s mg_list_next).
 */
#include "ct.h"
#include "ws/ws_int.h"

static mg_ws_hs_t hs;

static int nego(const char *v) {
    memset(&hs, 0, sizeof(hs));
    mg_ws_negotiate_pmd(v, strlen(v), &hs);
    return hs.pmd;
}

#define BASE "permessage-deflate; server_no_context_takeover"

static void plain_offer(void) {
    CHECK_INT(nego("permessage-deflate"), 15);
    CHECK_INT(hs.pmd_client_nct, 0);
    CHECK_STR(hs.pmd_resp, BASE);
    CHECK_INT(nego("  PerMessage-Deflate  "), 15); /* case and spaces */
    CHECK_STR(hs.pmd_resp, BASE);
    CHECK_INT(nego(""), 0);
    CHECK_STR(hs.pmd_resp, "");
    CHECK_INT(nego("x-webkit-deflate-frame"), 0);
    CHECK_INT(nego("permessage-deflatex"), 0);
    CHECK_INT(nego(";"), 0);
    CHECK_INT(nego(","), 0);
}

static void client_max_window_bits(void) {
    /* with no value (the client can take our choice), or 8..15, plain or
     * quoted; we do not answer it (the client then keeps its own) */
    CHECK_INT(nego("permessage-deflate; client_max_window_bits"), 15);
    CHECK_STR(hs.pmd_resp, BASE);
    CHECK_INT(nego("permessage-deflate;client_max_window_bits=15"), 15);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits=8"), 15);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits=\"10\""), 15);
    CHECK_STR(hs.pmd_resp, BASE);
    CHECK_INT(nego("permessage-deflate; CLIENT_MAX_WINDOW_BITS=9"), 15);
    /* refused: out of range, not a number, repeated */
    CHECK_INT(nego("permessage-deflate; client_max_window_bits=7"), 0);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits=16"), 0);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits=1x"), 0);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits=-9"), 0);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits="), 0);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits=10; client_max_window_bits=10"), 0);
    CHECK_INT(nego("permessage-deflate; client_max_window_bits; client_max_window_bits"), 0);
}

static void server_max_window_bits(void) {
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=10"), 10);
    CHECK_STR(hs.pmd_resp, BASE "; server_max_window_bits=10");
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=9"), 9);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=\"12\""), 12);
    CHECK_STR(hs.pmd_resp, BASE "; server_max_window_bits=12");
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=15"), 15);
    CHECK_STR(hs.pmd_resp, BASE "; server_max_window_bits=15");
    /* zlib's raw deflate cannot do 8; a value is required */
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=8"), 0);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=16"), 0);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits"), 0);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=1O"), 0);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10"), 0);
}

static void context_takeover(void) {
    /* we always reset our compressor: server_no_context_takeover is in
     * every answer, asked or not; the client's flag is echoed */
    CHECK_INT(nego("permessage-deflate; server_no_context_takeover"), 15);
    CHECK_INT(hs.pmd_client_nct, 0);
    CHECK_STR(hs.pmd_resp, BASE);
    CHECK_INT(nego("permessage-deflate; client_no_context_takeover"), 15);
    CHECK_INT(hs.pmd_client_nct, 1);
    CHECK_STR(hs.pmd_resp, BASE "; client_no_context_takeover");
    CHECK_INT(nego("permessage-deflate; client_no_context_takeover; server_no_context_takeover;"
                   " server_max_window_bits=11; client_max_window_bits"),
              11);
    CHECK_INT(hs.pmd_client_nct, 1);
    CHECK_STR(hs.pmd_resp, BASE "; client_no_context_takeover; server_max_window_bits=11");
    /* the flags take no value and come once */
    CHECK_INT(nego("permessage-deflate; server_no_context_takeover=1"), 0);
    CHECK_INT(nego("permessage-deflate; client_no_context_takeover=\"\""), 0);
    CHECK_INT(nego("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
              0);
    CHECK_INT(nego("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
              0);
}

static void bad_params(void) {
    CHECK_INT(nego("permessage-deflate; foo"), 0);
    CHECK_STR(hs.pmd_resp, "");
    CHECK_INT(hs.pmd_client_nct, 0);
    CHECK_INT(nego("permessage-deflate; foo=1"), 0);
    CHECK_INT(nego("permessage-deflate; client_no_context_takeover; mux"), 0);
    CHECK_INT(hs.pmd_client_nct, 0); /* nothing of a declined offer is kept */
}

static void offers_in_order(void) {
    /* the first offer we can honour wins; declined ones are skipped */
    CHECK_INT(nego("permessage-deflate; foo, permessage-deflate; server_max_window_bits=10"), 10);
    CHECK_INT(nego("x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover"), 15);
    CHECK_INT(hs.pmd_client_nct, 1);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=12, permessage-deflate"), 12);
    CHECK_INT(nego("permessage-deflate; server_max_window_bits=8, permessage-deflate; "
                   "server_max_window_bits=9"),
              9);
    CHECK_INT(nego("permessage-deflate; foo, permessage-deflate; bar"), 0);
    CHECK_INT(nego(", , permessage-deflate"), 15);
}

static void bounded(void) {
    /* an offer longer than the parse buffer (512) is cut, not overrun; the
     * length given is honoured (no NUL needed) */
    char big[2048];
    memset(big, ' ', sizeof(big));
    memcpy(big, "permessage-deflate", 18);
    memset(&hs, 0, sizeof(hs));
    mg_ws_negotiate_pmd(big, sizeof(big), &hs);
    CHECK_INT(hs.pmd, 15);
    memcpy(big, "permessage-deflate; client_no_context_takeover", 46);
    memset(&hs, 0, sizeof(hs));
    mg_ws_negotiate_pmd(big, 18, &hs);
    CHECK_INT(hs.pmd, 15);
    CHECK_INT(hs.pmd_client_nct, 0);
}

/* Upgrade and Connection values: a token among comma-separated ones,
 * without case, white space around it and empty elements ignored; a
 * token's length is given (no NUL needed) and a longer name is another. */
static void tokens(void) {
    static const char cut[] = "upgrade-not";
    CHECK(mg_ws_token_in("keep-alive, Upgrade", 19, "upgrade"));
    CHECK(mg_ws_token_in(" , ,\twebsocket\t, ", 17, "websocket"));
    CHECK(!mg_ws_token_in("websockets", 10, "websocket"));
    CHECK(!mg_ws_token_in("web socket", 10, "websocket"));
    CHECK(!mg_ws_token_in("", 0, "upgrade"));
    CHECK(mg_ws_token_in(cut, 7, "upgrade"));
    CHECK(!mg_ws_token_in(cut, 6, "upgrade"));
}

int main(void) {
    CT_RUN(plain_offer);
    CT_RUN(client_max_window_bits);
    CT_RUN(server_max_window_bits);
    CT_RUN(context_takeover);
    CT_RUN(bad_params);
    CT_RUN(offers_in_order);
    CT_RUN(bounded);
    CT_RUN(tokens);
    return ct_end();
}
