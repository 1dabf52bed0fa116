/*
 * gen.c -- generations: the refcounts, the current one, and freeing one.
 * A generation is one successful load of the conf file and scripts (the
 * loading is app/load.c's); requests and sockets hold a reference, and the
 * last one out of a superseded generation frees it. What the loader made
 * beside the C tables (the Lua state) goes with the destructor the loader
 * set, so this layer never calls the Lua one.
 */
#include "conf/conf.h"

#include <stdlib.h>
#include <string.h>

mg_gen_t *mg_gen_current;
mg_gen_t *mg_gen_pending;
mg_gen_t *mg_gen_draining[MG_GEN_DRAINING_MAX];
int mg_gen_ndraining;

/* an old generation left the list (freed) */
static void mg_gen_retire(mg_gen_t *g) {
    if (!g->draining) /* never listed (a load that failed: maybe off the loop's thread) */
        return;
    for (int i = 0; i < mg_gen_ndraining; i++)
        if (mg_gen_draining[i] == g) {
            mg_gen_draining[i] = mg_gen_draining[--mg_gen_ndraining];
            mg_gen_draining[mg_gen_ndraining] = NULL;
            return;
        }
}

/* the worker's requests and sockets on g, into its metrics slot: the refs
 * but the one of being current or pending */
static inline int mg_gen_in_use(const mg_gen_t *g) {
    int own = (g == mg_gen_current) + (g == mg_gen_pending);
    return g->refs > own ? g->refs - own : 0;
}

/* inline: every request retains and releases its generation */
__attribute__((always_inline)) static inline void mg_gen_publish(const mg_gen_t *g) {
    (void)g; /* MG_METRICS_OFF: nothing published */
    mg_met_gen_use(g->id, g->loaded_at, mg_gen_in_use(g));
}

static void mg_gen_free_ws(mg_ws_conf_t *w) {
    int i;
    if (w == NULL)
        return;
    for (i = 0; i < w->nprotocols; i++)
        free(w->protocols[i]);
    for (i = 0; i < w->norigins; i++)
        free(w->origins[i]);
    free(w->protocols);
    free(w->origins);
    free(w->upstream_path);
    free(w);
}

mg_upstream_t *mg_gen_upstream(mg_gen_t *gen, const char *name, size_t len) {
    for (int i = 0; i < gen->nupstreams; i++)
        if (strlen(gen->upstreams[i].name) == len && memcmp(gen->upstreams[i].name, name, len) == 0)
            return &gen->upstreams[i];
    return NULL;
}

void mg_gen_admin_docs(mg_gen_t *g) {
    if (g->admin_built)
        return;
    g->admin_built = 1;
    if (g->admin_build)
        g->admin_build(g);
}

void mg_gen_free(mg_gen_t *g) {
    int i, k;
    if (g == NULL)
        return;
    mg_gen_retire(g);
    if (g->dtor)
        g->dtor(g);
    for (i = 0; i < g->nroutes; i++) {
        mg_route_t *r = &g->routes[i];
        for (k = 0; r->segs && k < r->nsegs; k++)
            free((char *)r->segs[k].param);
        free(r->segs);
        mg_gen_free_ws(r->ws);
        free(r->rule);
        free(r->name);
        free(r->host);
    }
    mg_route_table_free(g);
    free(g->routes);
    for (i = 0; i < g->nupstreams; i++)
        free(g->upstreams[i].peers);
    free(g->upstreams);
    free(g->listen);
    for (i = 0; i < g->nedge; i++) {
        free(g->edge[i].trusted);
        free(g->edge[i].hsts);
    }
    free(g->edge);
    for (i = 0; i < g->nshd; i++)
        free(g->shd_names[i]);
    free(g->shd_names);
    free(g->shd_sizes);
    free(g->access_log_dest);
    for (i = 0; i < g->ndesc; i++)
        free(g->desc[i]);
    free(g->desc);
    free(g->desc_sorted);
    free(g->conf_file);
    free(g->admin_token);
    free(g->health_path);
    free(g->admin_config);
    free(g->admin_routes);
    for (i = 0; i < g->nadmin_routes; i++)
        free(g->admin_route_names[i]);
    free(g->admin_route_names);
    free(g->admin_route_ends);
    free(g->admin_page);
    free(g);
}

void mg_gen_retain(mg_gen_t *gen) {
    gen->refs++;
    mg_gen_publish(gen);
}

void mg_gen_release(mg_gen_t *gen) {
    if (--gen->refs == 0) {
        mg_debug("generation %u freed", gen->id);
        mg_met_gen_use(gen->id, gen->loaded_at, 0);
        mg_gen_free(gen);
        return;
    }
    mg_gen_publish(gen);
}

void mg_gen_activate(mg_gen_t *gen) {
    mg_gen_t *old = mg_gen_current;
    mg_gen_retain(gen);
    mg_gen_current = gen;
    /* not at load: a generation that is refused must not change it */
    if (gen->log_level >= 0)
        mg_log_level = gen->log_level;
    if (gen->access_log)
        mg_access_log_open(gen->access_log_dest);
    mg_gen_publish(gen);
    /* still held by requests or sockets: listed as draining until freed */
    if (old && old != gen && old->refs > 1 && mg_gen_ndraining < MG_GEN_DRAINING_MAX) {
        mg_gen_draining[mg_gen_ndraining++] = old;
        old->draining = 1;
    }
    if (old)
        mg_gen_release(old);
}

static int mg_gen_desc_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void mg_gen_desc_sort(mg_gen_t *g) {
    free(g->desc_sorted);
    g->desc_sorted = NULL;
    if (g->ndesc == 0 || (g->desc_sorted = malloc(sizeof(char *) * g->ndesc)) == NULL)
        return; /* mg_gen_desc_has scans */
    memcpy(g->desc_sorted, g->desc, sizeof(char *) * g->ndesc);
    qsort(g->desc_sorted, g->ndesc, sizeof(char *), mg_gen_desc_cmp);
}

int mg_gen_desc_has(const mg_gen_t *g, const char *line) {
    if (g->desc_sorted)
        return bsearch(&line, g->desc_sorted, g->ndesc, sizeof(char *), mg_gen_desc_cmp) != NULL;
    for (int i = 0; i < g->ndesc; i++)
        if (strcmp(g->desc[i], line) == 0)
            return 1;
    return 0;
}

void mg_gen_log_diff(mg_gen_t *old, mg_gen_t *gen) {
    int i, changes = 0;
    for (i = 0; i < gen->ndesc; i++)
        if (!mg_gen_desc_has(old, gen->desc[i])) {
            mg_info("reload: + route %s", gen->desc[i]);
            changes++;
        }
    for (i = 0; i < old->ndesc; i++)
        if (!mg_gen_desc_has(gen, old->desc[i])) {
            mg_info("reload: - route %s", old->desc[i]);
            changes++;
        }
    mg_info("reload: generation %u: %d routes, %d route changes", gen->id, gen->nroutes, changes);
}
