/*
 * acme_int.h -- the ACME process's C helpers for lib/moongate/acme.lua,
 * shared by acme.c (the process), acme_crypto.c (keys, JWS signatures,
 * CSRs, certificate facts) and acme_https.c (the blocking HTTPS client).
 */
#ifndef MG_ACME_INT_H
#define MG_ACME_INT_H

#include "app/app.h"

/* Each adds its functions to the table on top of L's stack. */
void mg_acme_crypto_open(lua_State *L);
void mg_acme_https_open(lua_State *L);

#endif
