/*
 * ws_handshake.c -- the RFC 6455 opening handshake: checking a client's
 * upgrade request (4.2.1), Sec-WebSocket-Accept (4.2.2), a fresh key for
 * our own upgrades to upstreams, and picking a permessage-deflate offer
 * (RFC 7692) we can honour.
 */
#include "ws/ws_int.h"
#include "gateway/gateway.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int mg_token_in(const char *v, size_t len, const char *tok) {
    size_t tl = strlen(tok), i = 0;
    while (i < len) {
        size_t s, e;
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        s = i;
        while (i < len && v[i] != ',')
            i++;
        e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return 1;
    }
    return 0;
}

void mg_ws_accept_for(const char *key, size_t len, char *out) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char sha[SHA_DIGEST_LENGTH];
    char buf[128];
    if (len > 64)
        len = 64;
    memcpy(buf, key, len);
    memcpy(buf + len, guid, sizeof(guid) - 1);
    SHA1((unsigned char *)buf, len + sizeof(guid) - 1, sha);
    EVP_EncodeBlock((unsigned char *)out, sha, SHA_DIGEST_LENGTH);
}

void mg_ws_key(char *out) {
    unsigned char raw[16];
    char id[40];
    mg_request_id(id); /* 32 random hex digits: 16 bytes */
    for (int i = 0; i < 16; i++)
        raw[i] =
            (unsigned char)(((id[2 * i] % 16) << 4) | (id[2 * i + 1] % 16)) ^ (unsigned char)id[i];
    EVP_EncodeBlock((unsigned char *)out, raw, 16);
}

/* Picks a permessage-deflate offer we can honour (RFC 7692 5, 7.1). */
void mg_ws_negotiate_pmd(const char *v, size_t len, mg_ws_hs_t *hs) {
    size_t i = 0;
    while (i < len && !hs->pmd) {
        /* one offer: up to the next ',' */
        size_t s = i, e;
        int ok = 1, cnct = 0, snct = 0, cmwb = 0, smwb = 0;
        char params[160] = "";
        while (i < len && v[i] != ',')
            i++;
        e = i++;
        {
            char offer[512];
            char *tok, *save;
            size_t ol = e - s < sizeof(offer) - 1 ? e - s : sizeof(offer) - 1;
            memcpy(offer, v + s, ol);
            offer[ol] = '\0';
            tok = strtok_r(offer, ";", &save);
            if (tok == NULL)
                continue;
            while (*tok == ' ' || *tok == '\t')
                tok++;
            {
                char *t = tok + strlen(tok);
                while (t > tok && (t[-1] == ' ' || t[-1] == '\t'))
                    *--t = '\0';
            }
            if (strcasecmp(tok, "permessage-deflate") != 0)
                continue;
            while ((tok = strtok_r(NULL, ";", &save)) != NULL) {
                char *eq, *t;
                while (*tok == ' ' || *tok == '\t')
                    tok++;
                t = tok + strlen(tok);
                while (t > tok && (t[-1] == ' ' || t[-1] == '\t'))
                    *--t = '\0';
                eq = strchr(tok, '=');
                if (eq)
                    *eq++ = '\0';
                if (eq && *eq == '"') {
                    eq++;
                    if (*eq && eq[strlen(eq) - 1] == '"')
                        eq[strlen(eq) - 1] = '\0';
                }
                if (strcasecmp(tok, "server_no_context_takeover") == 0 && !eq && !snct)
                    snct = 1;
                else if (strcasecmp(tok, "client_no_context_takeover") == 0 && !eq && !cnct)
                    cnct = 1;
                else if (strcasecmp(tok, "server_max_window_bits") == 0 && eq && !smwb) {
                    int b = atoi(eq);
                    /* zlib's raw deflate cannot use an 8-bit window */
                    if (b < 9 || b > 15 || strspn(eq, "0123456789") != strlen(eq))
                        ok = 0;
                    smwb = b;
                } else if (strcasecmp(tok, "client_max_window_bits") == 0 && !cmwb) {
                    if (eq &&
                        (atoi(eq) < 8 || atoi(eq) > 15 || strspn(eq, "0123456789") != strlen(eq)))
                        ok = 0;
                    cmwb = eq ? atoi(eq) : -1;
                } else {
                    ok = 0; /* unknown or repeated parameter: decline this offer */
                }
            }
        }
        if (!ok)
            continue;
        /* we always reset our compressor per message: it keeps sockets small */
        snprintf(params, sizeof(params), "permessage-deflate; server_no_context_takeover%s%s",
                 cnct ? "; client_no_context_takeover" : "", "");
        if (smwb) {
            size_t l = strlen(params);
            snprintf(params + l, sizeof(params) - l, "; server_max_window_bits=%d", smwb);
        }
        hs->pmd = smwb ? smwb : 15;
        hs->pmd_client_nct = cnct;
        snprintf(hs->pmd_resp, sizeof(hs->pmd_resp), "%s", params);
    }
}

/* Validates an upgrade request (RFC 6455 4.2.1). Returns 0, or the status
 * to refuse with (400, 403, 426) and *why. */
int mg_ws_handshake_check(mg_req_t *r, mg_ws_hs_t *hs, const char **why) {
    mg_ws_conf_t *wc = r->route->ws;
    const char *v, *key;
    size_t vl, kl;
    unsigned char raw[32];

    memset(hs, 0, sizeof(*hs));
    if (r->method != HTTP_GET || r->http_minor < 1) {
        *why = "websocket handshake needs GET and HTTP/1.1";
        return 400;
    }
    v = mg_req_header(r, "upgrade", &vl);
    if (v == NULL || !mg_token_in(v, vl, "websocket")) {
        *why = "websocket handshake needs Upgrade: websocket";
        return 400;
    }
    v = mg_req_header(r, "connection", &vl);
    if (v == NULL || !mg_token_in(v, vl, "upgrade")) {
        *why = "websocket handshake needs Connection: Upgrade";
        return 400;
    }
    v = mg_req_header(r, "sec-websocket-version", &vl);
    if (v == NULL || vl != 2 || memcmp(v, "13", 2) != 0) {
        *why = "unsupported websocket version";
        return 426;
    }
    key = mg_req_header(r, "sec-websocket-key", &kl);
    if (mg_req_header_n(r, "sec-websocket-key", 1, &vl) != NULL) {
        *why = "repeated Sec-WebSocket-Key";
        return 400;
    }
    if (key == NULL || kl != 24 || EVP_DecodeBlock(raw, (const unsigned char *)key, 24) != 18 ||
        key[22] != '=' || key[23] != '=') {
        *why = "bad Sec-WebSocket-Key";
        return 400;
    }
    if (r->clen > 0 || r->chunked) {
        *why = "websocket handshake with a body";
        return 400;
    }
    if (wc->norigins) {
        int ok = 0;
        v = mg_req_header(r, "origin", &vl);
        for (int i = 0; v && i < wc->norigins; i++)
            if (strlen(wc->origins[i]) == vl && strncasecmp(wc->origins[i], v, vl) == 0)
                ok = 1;
        if (!ok) {
            *why = "origin not allowed";
            return 403;
        }
    }
    mg_ws_accept_for(key, kl, hs->accept);
    /* repeated header lines form one list (RFC 6455 11.3.4); the
     * client's order of preference wins among the route's protocols */
    for (int line = 0; wc->nprotocols && !hs->protocol[0] &&
                       (v = mg_req_header_n(r, "sec-websocket-protocol", line, &vl)) != NULL;
         line++) {
        size_t i = 0;
        while (i < vl && !hs->protocol[0]) {
            size_t s, e;
            while (i < vl && (v[i] == ' ' || v[i] == ','))
                i++;
            s = i;
            while (i < vl && v[i] != ',' && v[i] != ' ')
                i++;
            e = i;
            for (int k = 0; k < wc->nprotocols; k++)
                if (strlen(wc->protocols[k]) == e - s &&
                    strncmp(wc->protocols[k], v + s, e - s) == 0 && e - s < sizeof(hs->protocol))
                    memcpy(hs->protocol, v + s, e - s);
        }
    }
    if (wc->deflate && wc->mode != MG_WS_TUNNEL)
        for (int line = 0;
             !hs->pmd && (v = mg_req_header_n(r, "sec-websocket-extensions", line, &vl)) != NULL;
             line++)
            mg_ws_negotiate_pmd(v, vl, hs);
    return 0;
}
