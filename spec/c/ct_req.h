/*
 * ct_req.h -- a request for the C unit tests, without a connection: its
 * head laid out as the parser callbacks lay it (the target, then each
 * name and value, in one buffer), the rest of the request zero.
 */
#ifndef MG_CT_REQ_H
#define MG_CT_REQ_H

#include "http/http.h"

#include <string.h>

/* url, then NULL-terminated name, value pairs, into hbuf (cap bytes) and
 * hdrs; host_idx and xrid_idx -1 as the parser leaves them. */
static inline void ct_req_head(mg_req_t *r, char *hbuf, size_t cap, mg_hdr_t *hdrs, const char *url,
                               const char *const *kv) {
    size_t n = strlen(url);
    memset(r, 0, sizeof(*r));
    memset(hbuf, 0, cap);
    memcpy(hbuf, url, n);
    r->hbuf = hbuf;
    r->hcap = cap;
    r->hdrs = hdrs;
    r->url_len = (uint32_t)n;
    r->host_idx = r->xrid_idx = -1;
    for (int i = 0; kv && kv[2 * i]; i++) {
        size_t nl = strlen(kv[2 * i]), vl = strlen(kv[2 * i + 1]);
        hdrs[i].noff = (uint32_t)n;
        hdrs[i].nlen = (uint32_t)nl;
        memcpy(hbuf + n, kv[2 * i], nl);
        n += nl;
        hdrs[i].voff = (uint32_t)n;
        hdrs[i].vlen = (uint32_t)vl;
        memcpy(hbuf + n, kv[2 * i + 1], vl);
        n += vl;
        r->nhdrs = i + 1;
    }
    r->hlen = n;
}

#endif
