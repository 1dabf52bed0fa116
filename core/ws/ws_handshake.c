/*
 * ws_handshake.c -- the pure parts of the RFC 6455 opening handshake, on
 * strings: tokens in a header value, Sec-WebSocket-Key (4.2.1) and
 * Sec-WebSocket-Accept (4.2.2), a fresh key for our own upgrades to
 * upstreams, the Origin and subprotocol checks against a route, and
 * picking a permessage-deflate offer (RFC 7692) we can honour. Reading
 * them from the request is the upgrade's (gateway/upgrade.c).
 */
#include "ws/ws_int.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int mg_ws_token_in(const char *v, size_t len, const char *tok) {
    const char *el;
    size_t i = 0, l, tl = strlen(tok);
    while (mg_list_next(v, len, &i, &el, &l))
        if (mg_name_eq(el, l, tok, tl))
            return 1;
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

int mg_ws_key_ok(const char *key, size_t len) {
    unsigned char raw[32];
    return key != NULL && len == 24 && EVP_DecodeBlock(raw, (const unsigned char *)key, 24) == 18 &&
           key[22] == '=' && key[23] == '=';
}

int mg_ws_origin_ok(const mg_ws_conf_t *wc, const char *v, size_t vl) {
    int ok = 0;
    for (int i = 0; v && i < wc->norigins; i++)
        if (mg_name_eq(v, vl, wc->origins[i], strlen(wc->origins[i])))
            ok = 1;
    return ok;
}

void mg_ws_pick_protocol(const mg_ws_conf_t *wc, const char *v, size_t vl, mg_ws_hs_t *hs) {
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
            if (strlen(wc->protocols[k]) == e - s && strncmp(wc->protocols[k], v + s, e - s) == 0 &&
                e - s < sizeof(hs->protocol))
                memcpy(hs->protocol, v + s, e - s);
    }
}
