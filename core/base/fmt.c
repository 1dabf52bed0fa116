/*
 * fmt.c -- the bounded appender the access-log lines are built with
 * (base.h, mg_fmt_t): decimal integers, fixed-point milliseconds, JSON
 * strings and ISO 8601 times, straight into the line's buffer, without
 * printf. A line of ~25 fields used to be a dozen snprintf calls (three
 * of them formatting doubles) into pieces copied again into the line.
 */
#include "base/base.h"

#include <stdio.h>
#include <time.h>

/* two digits at a time: "00" .. "99" */
const char mg_fmt_d2[201] = "0001020304050607080910111213141516171819"
                            "2021222324252627282930313233343536373839"
                            "4041424344454647484950515253545556575859"
                            "6061626364656667686970717273747576777879"
                            "8081828384858687888990919293949596979899";

/* ".000" .. ".999": a fraction's point and three digits, or (from its
 * second byte) a number's three digits, as one 4-byte copy; the NUL ends
 * the last entry, so the copy from ".999"'s second byte stays inside */
const char mg_fmt_d3[4001] =
    ".000.001.002.003.004.005.006.007.008.009.010.011.012.013.014.015.016.017.018.019"
    ".020.021.022.023.024.025.026.027.028.029.030.031.032.033.034.035.036.037.038.039"
    ".040.041.042.043.044.045.046.047.048.049.050.051.052.053.054.055.056.057.058.059"
    ".060.061.062.063.064.065.066.067.068.069.070.071.072.073.074.075.076.077.078.079"
    ".080.081.082.083.084.085.086.087.088.089.090.091.092.093.094.095.096.097.098.099"
    ".100.101.102.103.104.105.106.107.108.109.110.111.112.113.114.115.116.117.118.119"
    ".120.121.122.123.124.125.126.127.128.129.130.131.132.133.134.135.136.137.138.139"
    ".140.141.142.143.144.145.146.147.148.149.150.151.152.153.154.155.156.157.158.159"
    ".160.161.162.163.164.165.166.167.168.169.170.171.172.173.174.175.176.177.178.179"
    ".180.181.182.183.184.185.186.187.188.189.190.191.192.193.194.195.196.197.198.199"
    ".200.201.202.203.204.205.206.207.208.209.210.211.212.213.214.215.216.217.218.219"
    ".220.221.222.223.224.225.226.227.228.229.230.231.232.233.234.235.236.237.238.239"
    ".240.241.242.243.244.245.246.247.248.249.250.251.252.253.254.255.256.257.258.259"
    ".260.261.262.263.264.265.266.267.268.269.270.271.272.273.274.275.276.277.278.279"
    ".280.281.282.283.284.285.286.287.288.289.290.291.292.293.294.295.296.297.298.299"
    ".300.301.302.303.304.305.306.307.308.309.310.311.312.313.314.315.316.317.318.319"
    ".320.321.322.323.324.325.326.327.328.329.330.331.332.333.334.335.336.337.338.339"
    ".340.341.342.343.344.345.346.347.348.349.350.351.352.353.354.355.356.357.358.359"
    ".360.361.362.363.364.365.366.367.368.369.370.371.372.373.374.375.376.377.378.379"
    ".380.381.382.383.384.385.386.387.388.389.390.391.392.393.394.395.396.397.398.399"
    ".400.401.402.403.404.405.406.407.408.409.410.411.412.413.414.415.416.417.418.419"
    ".420.421.422.423.424.425.426.427.428.429.430.431.432.433.434.435.436.437.438.439"
    ".440.441.442.443.444.445.446.447.448.449.450.451.452.453.454.455.456.457.458.459"
    ".460.461.462.463.464.465.466.467.468.469.470.471.472.473.474.475.476.477.478.479"
    ".480.481.482.483.484.485.486.487.488.489.490.491.492.493.494.495.496.497.498.499"
    ".500.501.502.503.504.505.506.507.508.509.510.511.512.513.514.515.516.517.518.519"
    ".520.521.522.523.524.525.526.527.528.529.530.531.532.533.534.535.536.537.538.539"
    ".540.541.542.543.544.545.546.547.548.549.550.551.552.553.554.555.556.557.558.559"
    ".560.561.562.563.564.565.566.567.568.569.570.571.572.573.574.575.576.577.578.579"
    ".580.581.582.583.584.585.586.587.588.589.590.591.592.593.594.595.596.597.598.599"
    ".600.601.602.603.604.605.606.607.608.609.610.611.612.613.614.615.616.617.618.619"
    ".620.621.622.623.624.625.626.627.628.629.630.631.632.633.634.635.636.637.638.639"
    ".640.641.642.643.644.645.646.647.648.649.650.651.652.653.654.655.656.657.658.659"
    ".660.661.662.663.664.665.666.667.668.669.670.671.672.673.674.675.676.677.678.679"
    ".680.681.682.683.684.685.686.687.688.689.690.691.692.693.694.695.696.697.698.699"
    ".700.701.702.703.704.705.706.707.708.709.710.711.712.713.714.715.716.717.718.719"
    ".720.721.722.723.724.725.726.727.728.729.730.731.732.733.734.735.736.737.738.739"
    ".740.741.742.743.744.745.746.747.748.749.750.751.752.753.754.755.756.757.758.759"
    ".760.761.762.763.764.765.766.767.768.769.770.771.772.773.774.775.776.777.778.779"
    ".780.781.782.783.784.785.786.787.788.789.790.791.792.793.794.795.796.797.798.799"
    ".800.801.802.803.804.805.806.807.808.809.810.811.812.813.814.815.816.817.818.819"
    ".820.821.822.823.824.825.826.827.828.829.830.831.832.833.834.835.836.837.838.839"
    ".840.841.842.843.844.845.846.847.848.849.850.851.852.853.854.855.856.857.858.859"
    ".860.861.862.863.864.865.866.867.868.869.870.871.872.873.874.875.876.877.878.879"
    ".880.881.882.883.884.885.886.887.888.889.890.891.892.893.894.895.896.897.898.899"
    ".900.901.902.903.904.905.906.907.908.909.910.911.912.913.914.915.916.917.918.919"
    ".920.921.922.923.924.925.926.927.928.929.930.931.932.933.934.935.936.937.938.939"
    ".940.941.942.943.944.945.946.947.948.949.950.951.952.953.954.955.956.957.958.959"
    ".960.961.962.963.964.965.966.967.968.969.970.971.972.973.974.975.976.977.978.979"
    ".980.981.982.983.984.985.986.987.988.989.990.991.992.993.994.995.996.997.998.999";

/* the decimal digits of v, 1 .. 20 */
static inline unsigned mg_fmt_digits(uint64_t v) {
    unsigned n = 1;
    for (;;) {
        if (v < 10)
            return n;
        if (v < 100)
            return n + 1;
        if (v < 1000)
            return n + 2;
        if (v < 10000)
            return n + 3;
        v /= 10000;
        n += 4;
    }
}

/* v's digits written backward from their end, in place (base.h's
 * mg_fmt_o_u64 writes those under 10000 itself) */
char *mg_fmt_o_u64_long(char *o, uint64_t v) {
    unsigned n = mg_fmt_digits(v);
    char *q = o + n;
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100) * 2;
        v /= 100;
        *--q = mg_fmt_d2[d + 1];
        *--q = mg_fmt_d2[d];
    }
    if (v >= 10) {
        *--q = mg_fmt_d2[v * 2 + 1];
        *--q = mg_fmt_d2[v * 2];
    } else {
        *--q = (char)('0' + v);
    }
    return o + n;
}

void mg_fmt_put_time_ms(mg_fmt_t *b, int64_t ms) {
    mg_fmt_to(b, mg_fmt_o_time_ms(mg_fmt_at(b), ms));
}

/* The checked appends, one per type: put unchecked when b has room for
 * the worst case (max), else build it in tmp and cut it into b. */
#define MG_FMT_CHECKED(name, type, max, put)                                                       \
    void name(mg_fmt_t *b, type v) {                                                               \
        char tmp[max];                                                                             \
        mg_fmt_t t = {tmp, 0, sizeof(tmp)};                                                        \
        if (mg_fmt_room(b, max)) {                                                                 \
            put(b, v);                                                                             \
            return;                                                                                \
        }                                                                                          \
        put(&t, v);                                                                                \
        mg_fmt_mem(b, tmp, t.len);                                                                 \
    }

MG_FMT_CHECKED(mg_fmt_u64, uint64_t, MG_FMT_U64_MAX, mg_fmt_put_u64)
MG_FMT_CHECKED(mg_fmt_i64, int64_t, MG_FMT_I64_MAX, mg_fmt_put_i64)
MG_FMT_CHECKED(mg_fmt_milli, int64_t, MG_FMT_MILLI_MAX, mg_fmt_put_milli)

/* the bytes a JSON string cannot hold as they are (mg_json_escape's
 * choice: ASCII out, so every control and non-ASCII byte is \u00XX) */
static const unsigned char mg_fmt_esc[256] = {
    ['\0' ... 0x1f] = 1,
    ['"'] = 1,
    ['\\'] = 1,
    [0x7f ... 0xff] = 1,
};

/* Whether any of the 8 bytes of w needs an escape: one of them < 0x20,
 * '"', '\\' or >= 0x7f. A byte >= 0x80 sets its own high bit; below 0x80
 * each test sets the high bit of a byte that matches and no other (w - 0x20
 * of one < 0x20, w + 1 of 0x7f, x - 1 of x = 0 for the quote and the
 * backslash); a borrow or carry between bytes comes only out of a byte
 * that matched, so the answer is exact (which byte is left to the byte
 * loop). */
static inline int mg_fmt_esc_w(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ULL;
    uint64_t q = w ^ (ones * '"'), e = w ^ (ones * '\\');
    return ((w | (w - ones * 0x20) | (w + ones) | (q - ones) | (e - ones)) & (ones * 0x80)) != 0;
}

static inline int mg_fmt_esc8(const char *s) {
    uint64_t w;
    memcpy(&w, s, 8);
    return mg_fmt_esc_w(w);
}

#ifdef __SSE2__
/* 16 bytes at a time (base.h's mask of the bytes to escape) */
static inline int mg_fmt_esc16(__m128i v) { return mg_fmt_esc_bits16(v) != 0; }
#endif

/* The common case, a string that needs no escape and fits (n <= take):
 * checked and stored a word at a time, the last word overlapping the one
 * before it (SSE2: 16 bytes, 8 to 16 as two overlapping halves of one
 * vector; else 8 bytes); fewer than 8: two overlapping 4-byte halves
 * checked as one word; fewer than 4: byte by byte. 1 when it was appended
 * whole, 0 when a byte needs an escape (nothing counted; bytes may have
 * been stored past b->len, which the escaping loop writes over). Reads
 * only s[0, n). */
__attribute__((always_inline)) static inline int mg_fmt_plain(mg_fmt_t *b, const char *s, size_t n,
                                                              mg_fmt_qmap_t *map) {
    char *o = b->p + b->len;
    size_t *qpos = map ? &map->q : NULL;
    if (map)
        map->map = 0;
#ifdef __SSE2__
    const __m128i qm = _mm_set1_epi8('?');
    if (qpos)
        *qpos = n;
    if (n > 16) {
        size_t i = 0;
        __m128i v;
        for (; n - i > 16; i += 16) {
            v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
            if (mg_fmt_esc16(v))
                return 0;
            if (qpos && *qpos == n) {
                unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, qm));
                if (m)
                    *qpos = i + (size_t)__builtin_ctz(m);
            }
            _mm_storeu_si128((__m128i *)(void *)(o + i), v);
        }
        v = _mm_loadu_si128((const __m128i *)(const void *)(s + n - 16));
        if (mg_fmt_esc16(v))
            return 0;
        if (qpos && *qpos == n) { /* the bytes before i are known to hold none */
            unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, qm));
            if (m)
                *qpos = n - 16 + (size_t)__builtin_ctz(m);
        }
        _mm_storeu_si128((__m128i *)(void *)(o + n - 16), v);
    } else if (n >= 8) {
        uint64_t lo, hi;
        __m128i v;
        memcpy(&lo, s, 8);
        memcpy(&hi, s + n - 8, 8);
        v = _mm_set_epi64x((long long)hi, (long long)lo);
        if (mg_fmt_esc16(v))
            return 0;
        if (map) { /* bits 0-7: s[0, 8); 8-15: s[n - 8, n) */
            unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, qm));
            if (m & 0xff)
                map->q = (size_t)__builtin_ctz(m);
            else if (m)
                map->q = n - 16 + (size_t)__builtin_ctz(m);
            if (m) { /* the '=' and '&' by position in s */
                unsigned e = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('=')));
                unsigned a = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('&')));
                map->eq = (e & 0xff) | (e >> 8) << (n - 8);
                map->amp = (a & 0xff) | (a >> 8) << (n - 8);
                map->map = 1;
            }
        }
        memcpy(o, &lo, 8);
        memcpy(o + n - 8, &hi, 8);
    }
#else
    if (n >= 8) {
        size_t i = 0;
        for (; n - i > 8; i += 8) {
            if (mg_fmt_esc8(s + i))
                return 0;
            memcpy(o + i, s + i, 8);
        }
        if (mg_fmt_esc8(s + n - 8))
            return 0;
        memcpy(o + n - 8, s + n - 8, 8);
    }
#endif
    else if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, s, 4);
        memcpy(&hi, s + n - 4, 4);
        if (mg_fmt_esc_w(lo | (uint64_t)hi << 32))
            return 0;
        memcpy(o, &lo, 4);
        memcpy(o + n - 4, &hi, 4);
    } else {
        for (size_t i = 0; i < n; i++) {
            if (mg_fmt_esc[(unsigned char)s[i]])
                return 0;
            o[i] = s[i];
        }
    }
#ifdef __SSE2__
    if (qpos && n < 8)
#else
    if (qpos)
#endif
    {
        const char *q = memchr(s, '?', n);
        *qpos = q ? (size_t)(q - s) : n;
    }
    b->len += n;
    return 1;
}

int mg_fmt_put_plain(mg_fmt_t *b, const char *s, size_t n) { return mg_fmt_plain(b, s, n, NULL); }

int mg_fmt_put_plain_q(mg_fmt_t *b, const char *s, size_t n, mg_fmt_qmap_t *q) {
    return mg_fmt_plain(b, s, n, q);
}

/* mg_fmt_put_json past its fast path: a string to escape, or one longer
 * than it may take (kept out of line, so that the fast path saves and
 * restores no registers for it) */
__attribute__((noinline)) static void mg_fmt_put_json_esc(mg_fmt_t *b, const char *s, size_t n,
                                                          size_t escap) {
    static const char hex[] = "0123456789abcdef";
    char *o = b->p + b->len, *lim;
    size_t i = 0;
    lim = o + (escap - 7); /* a byte is taken while o + 7 < escap */
    while (i < n) {
        unsigned char ch;
        /* 8 bytes that need nothing: stored as they are */
        while (n - i >= 8 && lim - o >= 8 && !mg_fmt_esc8(s + i)) {
            memcpy(o, s + i, 8);
            o += 8;
            i += 8;
        }
        if (i == n)
            break;
        /* the tail, fewer than 8: the string's last 8 bytes stored over
         * the last ones copied, when the 8 need nothing (those before i
         * were copied as they are, so they are rewritten with themselves) */
        if (n - i < 8 && n >= 8 && (size_t)(lim - o) >= n - i && !mg_fmt_esc8(s + n - 8)) {
            memcpy(o + (n - i) - 8, s + n - 8, 8);
            o += n - i;
            break;
        }
        if (o >= lim)
            break;
        ch = (unsigned char)s[i++];
        if (!mg_fmt_esc[ch]) {
            *o++ = (char)ch;
        } else if (ch == '\0') {
            break;
        } else if (ch == '"' || ch == '\\') {
            o[0] = '\\';
            o[1] = (char)ch;
            o += 2;
        } else {
            memcpy(o, "\\u00", 4);
            o[4] = hex[ch >> 4];
            o[5] = hex[ch & 15];
            o += 6;
        }
    }
    b->len = (size_t)(o - b->p);
}

void mg_fmt_put_json(mg_fmt_t *b, const char *s, size_t n, size_t escap) {
    if (escap < 8)
        return;
    if (n == SIZE_MAX) /* NUL-terminated: at most escap - 7 bytes are taken */
        n = strnlen(s, escap);
    if (n <= escap - 7 && mg_fmt_plain(b, s, n, NULL))
        return;
    mg_fmt_put_json_esc(b, s, n, escap);
}

/* mg_fmt_put_json with the line's cap too: a byte at a time, each append
 * checked (only a builder short of room comes here) */
static void mg_fmt_json_cut(mg_fmt_t *b, const char *s, size_t n, size_t escap) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0, lim = escap - 7;
    while (i < n && o < lim) {
        size_t room = lim - o, end = n - i < room ? n : i + room, j = i;
        unsigned char ch;
        while (j < end && !mg_fmt_esc[(unsigned char)s[j]])
            j++;
        if (j > i) {
            mg_fmt_mem(b, s + i, j - i);
            o += j - i;
            i = j;
            continue;
        }
        ch = (unsigned char)s[i++];
        if (ch == '\0')
            return;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            mg_fmt_mem(b, e, 2);
            o += 2;
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            mg_fmt_mem(b, e, 6);
            o += 6;
        }
    }
}

void mg_fmt_json(mg_fmt_t *b, const char *s, size_t n, size_t escap) {
    if (escap < 8)
        return;
    if (mg_fmt_room(b, escap - 1))
        mg_fmt_put_json(b, s, n, escap);
    else
        mg_fmt_json_cut(b, s, n, escap);
}

/* "YYYY-MM-DDTHH:MM:SS" of s seconds since the epoch, 0 <= s and the
 * year at most 9999 (strftime's "%Y-%m-%dT%H:%M:%S" of gmtime's, byte for
 * byte): the civil date of the day number (H. Hinnant's days_from_civil
 * inverted), the time of day from two-digit pairs. 19. */
static size_t mg_fmt_iso_sec(char *o, int64_t s) {
    int64_t z = s / 86400 + 719468, era = z / 146097;
    unsigned tod = (unsigned)(s % 86400), doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
    unsigned y = (unsigned)(yoe + era * 400) + (m <= 2);
    memcpy(o, mg_fmt_d2 + y / 100 * 2, 2);
    memcpy(o + 2, mg_fmt_d2 + y % 100 * 2, 2);
    o[4] = '-';
    memcpy(o + 5, mg_fmt_d2 + m * 2, 2);
    o[7] = '-';
    memcpy(o + 8, mg_fmt_d2 + d * 2, 2);
    o[10] = 'T';
    memcpy(o + 11, mg_fmt_d2 + tod / 3600 * 2, 2);
    o[13] = ':';
    memcpy(o + 14, mg_fmt_d2 + tod / 60 % 60 * 2, 2);
    o[16] = ':';
    memcpy(o + 17, mg_fmt_d2 + tod % 60 * 2, 2);
    return 19;
}

mg_fmt_sec_t mg_fmt_sec = {.s = -1};

void mg_fmt_sec_set(int64_t s) {
    mg_fmt_t t = {mg_fmt_sec.dec, 0, sizeof(mg_fmt_sec.dec)};
    mg_fmt_put_u64(&t, (uint64_t)s);
    mg_fmt_sec.dec_len = t.len;
    if (s < 253402300800LL) { /* up to 9999-12-31T23:59:59: no gmtime, no strftime */
        mg_fmt_sec.iso_len = mg_fmt_iso_sec(mg_fmt_sec.iso, s);
    } else {
        time_t tt = (time_t)s;
        struct tm tm;
        if (gmtime_r(&tt, &tm) == NULL)
            memset(&tm, 0, sizeof(tm));
        mg_fmt_sec.iso_len =
            strftime(mg_fmt_sec.iso, sizeof(mg_fmt_sec.iso), "%Y-%m-%dT%H:%M:%S", &tm);
    }
    mg_fmt_sec.s = s;
}

void mg_fmt_put_iso_ms(mg_fmt_t *b, int64_t ms) { mg_fmt_to(b, mg_fmt_o_iso_ms(mg_fmt_at(b), ms)); }

void mg_fmt_iso_ms(mg_fmt_t *b, int64_t ms) {
    char tmp[MG_FMT_ISO_MAX];
    mg_fmt_t t = {tmp, 0, sizeof(tmp)};
    if (mg_fmt_room(b, MG_FMT_ISO_MAX)) {
        mg_fmt_put_iso_ms(b, ms);
        return;
    }
    mg_fmt_put_iso_ms(&t, ms);
    mg_fmt_mem(b, tmp, t.len);
}
