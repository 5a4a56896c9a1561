/* Paged attention on the CPU, reading the KV pool in place (no gather): decode and prefill.
 *
 * q [T, Hq, D], row r at q + r * q_stride (its heads contiguous: q may be a slice of the fused
 * q|k|v projection); k_pool, v_pool [num_blocks, block_size, Hkv, D], or with keys_transposed
 * k_pool [num_blocks, Hkv, D, block_size]; block_tables [S, W] (int32;
 * entries past ceil(length / block_size) are never read); table_of_row [T] (int32) or NULL:
 * row r reads block_tables[table_of_row[r]] (NULL: row r reads table r, a decode step);
 * lengths [T] (int32, in [1, W * block_size]): row r attends to the first lengths[r] tokens;
 * out [T, Hq, D]. All float32; everything but q contiguous.
 *
 * Decode (table_of_row NULL): decode_rows, one work item per (sequence, KV head); decode_item_t
 * with the keys transposed (scores 16 keys per vector), decode_item_rows with keys in rows.
 *
 * Prefill (table_of_row given): tiled so that the arithmetic runs in full vectors. A *tile* is up
 * to 16 query vectors that read the same keys: the G = Hq / Hkv query heads of one KV head, for
 * as many consecutive rows of one sequence as fit (4 rows of a prompt when G = 4).
 * The tile's queries are transposed once into Qt[d][lane], so that for every key row k
 *     s[lane] += Qt[d][lane] * k[d]        (one vector multiply-add per d, no horizontal sums)
 * gives 16 scores at once, and the values accumulate the same way, Ot[d][lane] += p[lane] * v[d].
 * Keys are visited in chunks of up to 16 (one block's slots) with the online softmax of flash
 * attention: a running max and sum per lane, the partial output rescaled when the max grows.
 * Rows of a tile may have different lengths (a prompt's causal mask): a key past a lane's
 * length gets probability 0. Tiles x KV heads run in parallel (OpenMP, dynamic).
 *
 * (A tile of a decode row fills only G of its 16 lanes: measured 0.7x the speed of decode_item_rows.)
 *
 * HEAD_DIM is fixed when the library is built (tutx.kernels.cpu_build compiles one library per
 * head dimension, like a Triton constexpr), so the loops over D unroll. Vectors are GCC/Clang
 * vector types, so the same source runs in AVX-512, AVX2 or NEON registers.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined (-DHEAD_DIM=...)"
#endif
#define D HEAD_DIM
#define LANES 16
#define CHUNK 16
#define MAX_GROUP 64

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
typedef float vf_unaligned __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));

#include "vec_math.h"

/* One chunk of n <= CHUNK keys for one tile: scores, online-softmax update, value accumulation.
 * Key j's element d is kb[j * kj + d * kd] (kj = Hkv * D, kd = 1 in rows; kj = 1, kd = block_size
 * with keys transposed), value j's row vb + j * stride. `n` is a compile-time CHUNK in the common case (always_inline). */
static inline __attribute__((always_inline)) void chunk(
    const vf *restrict Qt, vf *restrict Ot, vf *restrict m, vf *restrict l,
    const float *restrict kb, const float *restrict vb, int64_t stride, int64_t kj, int64_t kd, int n,
    int masked, int64_t t0, vf len)
{
    vf S[CHUNK];
    for (int j = 0; j < n; j++) S[j] = (vf){0};
    for (int d = 0; d < D; d++) {
        const vf qd = Qt[d];
        for (int j = 0; j < n; j++) S[j] += qd * kb[j * kj + d * kd];
    }
    vf mx = *m;
    if (masked) {
        for (int j = 0; j < n; j++) {
            vf t = (vf){0} + (float)(t0 + j);
            S[j] = lane_select(t < len, S[j], (vf){0} - FLT_MAX);
        }
    }
    for (int j = 0; j < n; j++) mx = lane_select(S[j] > mx, S[j], mx);
    const vf corr = vexp(*m - mx);
    vf sum = (vf){0};
    for (int j = 0; j < n; j++) {
        S[j] = vexp(S[j] - mx);
        sum += S[j];
    }
    *l = *l * corr + sum;
    *m = mx;
    for (int d = 0; d < D; d++) {
        vf acc = Ot[d] * corr;
        for (int j = 0; j < n; j++) acc += S[j] * vb[j * stride + d];
        Ot[d] = acc;
    }
}

/* Decode with keys in rows, one work item (sequence b, KV head h): its G query heads share every
 * key and value row read. Two passes over the sequence's pages, block by block: scores
 * s[g][t] = scale * q_g . k_t, then softmax over t and out_g = sum_t p[g][t] * v_t. The dot
 * products are `omp simd` reductions over D (one horizontal sum each). scores: G * L floats. */
static void decode_item_rows(const float *restrict qb, const float *restrict k_pool, const float *restrict v_pool,
                             const int32_t *restrict table, int64_t L, float *restrict ob, float *restrict scores,
                             int64_t Hkv, int64_t h, int64_t block_size, float scale, int64_t G)
{
    const int64_t stride = Hkv * D;
    float mx[MAX_GROUP];
    for (int64_t g = 0; g < G; g++) mx[g] = -FLT_MAX;
    for (int64_t t0 = 0; t0 < L; t0 += block_size) {  /* pass 1: scores and their max per head */
        const float *kb = k_pool + (int64_t)table[t0 / block_size] * block_size * stride + h * D;
        const int64_t n = L - t0 < block_size ? L - t0 : block_size;
        for (int64_t j = 0; j < n; j++) {
            const float *kr = kb + j * stride;
            for (int64_t g = 0; g < G; g++) {
                const float *qr = qb + g * D;
                float s = 0.0f;
#pragma omp simd reduction(+:s)
                for (int64_t d = 0; d < D; d++) s += qr[d] * kr[d];
                s *= scale;
                scores[g * L + t0 + j] = s;
                mx[g] = s > mx[g] ? s : mx[g];
            }
        }
    }
    float sum[MAX_GROUP];
    for (int64_t g = 0; g < G; g++) {  /* softmax numerators and sums */
        float *sg = scores + g * L, m = mx[g], acc = 0.0f;
        int64_t t = 0;
        for (; t + LANES <= L; t += LANES) {
            vf x;
            memcpy(&x, sg + t, sizeof(x));
            x = vexp(x - m);
            memcpy(sg + t, &x, sizeof(x));
        }
        for (; t < L; t++) sg[t] = expf(sg[t] - m);
#pragma omp simd reduction(+:acc)
        for (int64_t u = 0; u < L; u++) acc += sg[u];
        sum[g] = acc;
    }
    /* pass 2: weighted sum of the value rows */
    for (int64_t g = 0; g < G; g++) {
        const float *pg = scores + g * L;
        float acc[D];
        memset(acc, 0, sizeof(acc));
        for (int64_t t0 = 0; t0 < L; t0 += block_size) {
            const float *vb = v_pool + (int64_t)table[t0 / block_size] * block_size * stride + h * D;
            const int64_t n = L - t0 < block_size ? L - t0 : block_size;
            for (int64_t j = 0; j < n; j++) {
                const float p = pg[t0 + j], *vr = vb + j * stride;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) acc[d] += p * vr[d];
            }
        }
        const float inv = 1.0f / sum[g];
        for (int64_t d = 0; d < D; d++) ob[g * D + d] = acc[d] * inv;
    }
}

/* Decode with the keys transposed within each block: kt_pool [num_blocks, Hkv, D, block_size], so
 * that the keys of a block's slots lie side by side for every d. One work item per (sequence, KV
 * head), as in decode_item_rows, in three passes:
 *   scores, 16 keys at a time:  s[g][16 keys] += q[g][d] * kt[d][16 keys]   (a multiply-add per d
 *                               and head, no horizontal sums);
 *   softmax over each head's scores in full vectors;
 *   values row by row:          acc[g][:] += p[g][t] * v[t][:], every head's accumulator in registers.
 * Up to GMAX heads per call; `G` is a literal at each call site (decode_rows's switch), so that
 * the loops over heads unroll and S and acc stay in registers. */
#define GMAX 8
#define PREFETCH_AHEAD 2  /* key blocks requested ahead of the one being scored */
static inline __attribute__((always_inline)) void decode_item_t(
    const float *restrict qb, const float *restrict kt_pool, const float *restrict v_pool,
    const int32_t *restrict table, int64_t L, float *restrict ob, float *restrict scores, int64_t Lp,
    int64_t Hkv, int64_t h, int64_t bs, float scale, const int G)
{
    const int64_t stride = Hkv * D;
    const vi iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    float qs[GMAX][D];
    for (int g = 0; g < G; g++)
        for (int d = 0; d < D; d++) qs[g][d] = qb[g * D + d] * scale;
    for (int64_t t0 = 0; t0 < L; t0 += bs) {  /* pass 1: scores[g][t] */
        const float *kb = kt_pool + ((int64_t)table[t0 / bs] * Hkv + h) * D * bs;
        const int64_t n = L - t0 < bs ? L - t0 : bs;
        /* The pages lie anywhere in a pool larger than the caches, so the hardware prefetcher stops
         * at every block: ask for the keys two blocks ahead and this block's values (pass 3) now,
         * into L2 (prefetcht1: more misses in flight than L1's fill buffers allow). */
        for (int64_t a = t0 == 0 ? 1 : PREFETCH_AHEAD; a <= PREFETCH_AHEAD && t0 + a * bs < L; a++) {
            const float *ahead = kt_pool + ((int64_t)table[t0 / bs + a] * Hkv + h) * D * bs;
            for (int64_t o = 0; o < D * bs; o += LANES) __builtin_prefetch(ahead + o, 0, 2);
        }
        const float *vb = v_pool + (int64_t)table[t0 / bs] * bs * stride + h * D;
        for (int64_t j = 0; j < n; j++)
            for (int o = 0; o < D; o += LANES) __builtin_prefetch(vb + j * stride + o, 0, 2);
        int64_t c = 0;
        for (; c < n && c + LANES <= bs; c += LANES) {  /* 16 slots of the block (those past n: masked) */
            vf S[GMAX];
#pragma GCC unroll 8
            for (int g = 0; g < GMAX; g++) S[g] = (vf){0};  /* (all GMAX: the unused ones fold away) */
            for (int d = 0; d < D; d++) {
                vf kv;
                memcpy(&kv, kb + d * bs + c, sizeof(kv));
#pragma GCC unroll 8
                for (int g = 0; g < G; g++) S[g] += qs[g][d] * kv;
            }
            if (n - c < LANES) {
                const vi valid = iota < (int)(n - c);
#pragma GCC unroll 8
                for (int g = 0; g < G; g++) S[g] = lane_select(valid, S[g], (vf){0} - FLT_MAX);
            }
#pragma GCC unroll 8
            for (int g = 0; g < G; g++) memcpy(scores + g * Lp + t0 + c, &S[g], sizeof(vf));
        }
        for (; c < n; c++)  /* slots past the block's last full vector (a block size not a multiple of 16) */
            for (int g = 0; g < G; g++) {
                float acc = 0.0f;
                for (int d = 0; d < D; d++) acc += qs[g][d] * kb[d * bs + c];
                scores[g * Lp + t0 + c] = acc;
            }
    }
    const int64_t Lv = (L + LANES - 1) / LANES * LANES;
    float inv[GMAX];
    for (int g = 0; g < G; g++) {  /* pass 2: softmax numerators, in place, and their sum */
        float *sg = scores + g * Lp;
        for (int64_t t = L; t < Lv; t++) sg[t] = -FLT_MAX;
        vf mv = (vf){0} - FLT_MAX, sum = (vf){0};
        for (int64_t t = 0; t < Lv; t += LANES) {
            vf x;
            memcpy(&x, sg + t, sizeof(x));
            mv = lane_select(x > mv, x, mv);
        }
        float m = -FLT_MAX;
        for (int i = 0; i < LANES; i++) m = mv[i] > m ? mv[i] : m;
        for (int64_t t = 0; t < Lv; t += LANES) {
            vf x;
            memcpy(&x, sg + t, sizeof(x));
            x = vexp(x - m);
            if (t + LANES > L) x = lane_select(iota + (int)t < (int)L, x, (vf){0});
            memcpy(sg + t, &x, sizeof(x));
            sum += x;
        }
        float total = 0.0f;
        for (int i = 0; i < LANES; i++) total += sum[i];
        inv[g] = 1.0f / total;
    }
#if D % LANES == 0
    vf acc[GMAX][D / LANES];  /* pass 3: every head's output, in registers */
#pragma GCC unroll 8
    for (int g = 0; g < G; g++)
        for (int i = 0; i < D / LANES; i++) acc[g][i] = (vf){0};
    for (int64_t t0 = 0; t0 < L; t0 += bs) {
        const float *vb = v_pool + (int64_t)table[t0 / bs] * bs * stride + h * D;
        const int64_t n = L - t0 < bs ? L - t0 : bs;
        for (int64_t j = 0; j < n; j++) {
            vf vr[D / LANES];  /* loaded as values (a memcpy into the array went through the stack) */
            for (int i = 0; i < D / LANES; i++) vr[i] = *(const vf_unaligned *)(vb + j * stride + i * LANES);
#pragma GCC unroll 8
            for (int g = 0; g < G; g++) {
                const float p = scores[g * Lp + t0 + j];
                for (int i = 0; i < D / LANES; i++) acc[g][i] += p * vr[i];
            }
        }
    }
    for (int g = 0; g < G; g++)
        for (int i = 0; i < D / LANES; i++) {
            const vf o = acc[g][i] * inv[g];
            memcpy(ob + g * D + i * LANES, &o, sizeof(o));
        }
#else
    float acc[GMAX][D];
    memset(acc, 0, sizeof(acc));
    for (int64_t t0 = 0; t0 < L; t0 += bs) {
        const float *vb = v_pool + (int64_t)table[t0 / bs] * bs * stride + h * D;
        const int64_t n = L - t0 < bs ? L - t0 : bs;
        for (int64_t j = 0; j < n; j++)
            for (int g = 0; g < G; g++) {
                const float p = scores[g * Lp + t0 + j], *vr = vb + j * stride;
#pragma omp simd
                for (int d = 0; d < D; d++) acc[g][d] += p * vr[d];
            }
    }
    for (int g = 0; g < G; g++)
        for (int d = 0; d < D; d++) ob[g * D + d] = acc[g][d] * inv[g];
#endif
}

/* Decode: one query row per sequence, one work item per (sequence, KV head), each thread with its
 * own scratch for the scores; keys transposed (decode_item_t) or in rows (decode_item_rows). */
static int decode_rows(const float *restrict q, int64_t q_stride, const float *restrict k_pool,
                       const float *restrict v_pool, const int32_t *restrict block_tables,
                       const int32_t *restrict lengths, float *restrict out, int64_t B, int64_t Hq, int64_t Hkv, int64_t block_size, int64_t W, float scale,
                         int keys_transposed, int num_threads)
{
    const int64_t G = Hq / Hkv, Lp = (W * block_size + LANES - 1) / LANES * LANES + LANES;
    int status = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(sizeof(float) * (G > GMAX ? G : GMAX) * Lp);  /* Lp >= W * block_size */
        if (scores == NULL) {
#pragma omp atomic write
            status = 2;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < B * Hkv; item++) {
            if (scores == NULL) continue;
            const int64_t b = item / Hkv, h = item % Hkv, L = lengths[b];
            const int32_t *table = block_tables + b * W;
            const float *qb = q + b * q_stride + h * G * D;
            float *ob = out + (b * Hq + h * G) * D;
            if (!keys_transposed) {
                decode_item_rows(qb, k_pool, v_pool, table, L, ob, scores, Hkv, h, block_size, scale, G);
                continue;
            }
            switch (G) {  /* literal group sizes: the head loops unroll */
            case 1: decode_item_t(qb, k_pool, v_pool, table, L, ob, scores, Lp, Hkv, h, block_size, scale, 1); break;
            case 2: decode_item_t(qb, k_pool, v_pool, table, L, ob, scores, Lp, Hkv, h, block_size, scale, 2); break;
            case 3: decode_item_t(qb, k_pool, v_pool, table, L, ob, scores, Lp, Hkv, h, block_size, scale, 3); break;
            case 4: decode_item_t(qb, k_pool, v_pool, table, L, ob, scores, Lp, Hkv, h, block_size, scale, 4); break;
            case 8: decode_item_t(qb, k_pool, v_pool, table, L, ob, scores, Lp, Hkv, h, block_size, scale, 8); break;
            default:  /* other groups: GMAX heads at a time, each chunk reading the keys again */
                for (int64_t g0 = 0; g0 < G; g0 += GMAX)
                    decode_item_t(qb + g0 * D, k_pool, v_pool, table, L, ob + g0 * D, scores, Lp, Hkv, h,
                                  block_size, scale, (int)(G - g0 < GMAX ? G - g0 : GMAX));
            }
        }
        free(scores);
    }
    return status;
}

int tutx_paged_decode_f32(const float *restrict q, int64_t q_stride, const float *restrict k_pool,
                          const float *restrict v_pool,
                          const int32_t *restrict block_tables, const int32_t *restrict table_of_row,
                          const int32_t *restrict lengths,
                          float *restrict out,
                          int64_t T, int64_t Hq, int64_t Hkv, int64_t head_dim, int64_t block_size, int64_t W,
                          float scale, int keys_transposed, int num_threads)
{
    const int64_t G = Hq / Hkv;
    if (G > MAX_GROUP || G * Hkv != Hq || head_dim != HEAD_DIM || T < 0) return 1;
    if (table_of_row == NULL)  /* decode: each row alone (a tile would fill only G of its lanes) */
        return decode_rows(q, q_stride, k_pool, v_pool, block_tables, lengths, out, T, Hq, Hkv, block_size, W, scale,
                           keys_transposed, num_threads);
    /* Tiles: runs of consecutive rows that read one table, at most `rows_per_tile` each; with
     * G > LANES a row's heads are split into ceil(G / LANES) head chunks instead. */
    const int64_t rows_per_tile = G >= LANES ? 1 : LANES / G;
    const int64_t head_chunks = (G + LANES - 1) / LANES;
    int64_t *tile_start = (int64_t *)malloc(sizeof(int64_t) * (T + 1));
    if (tile_start == NULL) return 2;
    int64_t num_tiles = 0;
    for (int64_t r = 0; r < T;) {
        const int64_t table = table_of_row ? table_of_row[r] : r;
        int64_t e = r + 1;
        while (e < T && e - r < rows_per_tile && table_of_row && table_of_row[e] == table) e++;
        tile_start[num_tiles++] = r;
        r = e;
    }
    tile_start[num_tiles] = T;
    const int64_t stride = Hkv * D;  /* from one slot's row to the next, within a block */
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
    for (int64_t item = 0; item < num_tiles * Hkv * head_chunks; item++) {
        const int64_t tile = item / (Hkv * head_chunks), h = (item / head_chunks) % Hkv;
        const int64_t g0 = (item % head_chunks) * LANES, ng = G - g0 < LANES ? G - g0 : LANES;
        const int64_t r0 = tile_start[tile], nr = tile_start[tile + 1] - r0;
        const int32_t *table = block_tables + (table_of_row ? (int64_t)table_of_row[r0] : r0) * W;
        vf Qt[D], Ot[D], m = (vf){0} - FLT_MAX, l = (vf){0}, len = (vf){0};
        float *lenf = (float *)&len;
        int64_t maxlen = 0, minlen = INT64_MAX;
        memset(Qt, 0, sizeof(Qt));
        memset(Ot, 0, sizeof(Ot));
        for (int64_t i = 0; i < nr; i++) {
            const int64_t L = lengths[r0 + i];
            maxlen = L > maxlen ? L : maxlen;
            minlen = L < minlen ? L : minlen;
            for (int64_t g = 0; g < ng; g++) {
                const int lane = (int)(i * ng + g);
                const float *qr = q + (r0 + i) * q_stride + (h * G + g0 + g) * D;
                float *qt = (float *)Qt;
                for (int d = 0; d < D; d++) qt[d * LANES + lane] = qr[d] * scale;
                lenf[lane] = (float)L;
            }
        }
        for (int lane = (int)(nr * ng); lane < LANES; lane++) lenf[lane] = 1.0f;  /* unused lanes: key 0 */
        for (int64_t t0 = 0, n = 0; t0 < maxlen; t0 += n) {
            const int64_t blk = t0 / block_size, off = t0 % block_size;
            n = block_size - off;
            n = n < CHUNK ? n : CHUNK;
            n = n < maxlen - t0 ? n : maxlen - t0;
            const int64_t base = ((int64_t)table[blk] * block_size + off) * stride + h * D;
            const int masked = t0 + n > minlen;
            if (keys_transposed) {  /* key j, element d: kt[block][h][d][off + j] */
                const float *kb = k_pool + ((int64_t)table[blk] * Hkv + h) * D * block_size + off;
                if (n == CHUNK && !masked)
                    chunk(Qt, Ot, &m, &l, kb, v_pool + base, stride, 1, block_size, CHUNK, 0, t0, len);
                else
                    chunk(Qt, Ot, &m, &l, kb, v_pool + base, stride, 1, block_size, (int)n, masked, t0, len);
            } else if (n == CHUNK && !masked) {
                chunk(Qt, Ot, &m, &l, k_pool + base, v_pool + base, stride, stride, 1, CHUNK, 0, t0, len);
            } else {
                chunk(Qt, Ot, &m, &l, k_pool + base, v_pool + base, stride, stride, 1, (int)n, masked, t0, len);
            }
        }
        const vf inv = 1.0f / l;
        for (int d = 0; d < D; d++) Ot[d] *= inv;
        const float *ot = (const float *)Ot;
        for (int64_t i = 0; i < nr; i++)
            for (int64_t g = 0; g < ng; g++) {
                const int lane = (int)(i * ng + g);
                float *orow = out + ((r0 + i) * Hq + h * G + g0 + g) * D;
                for (int d = 0; d < D; d++) orow[d] = ot[d * LANES + lane];
            }
    }
    free(tile_start);
    return 0;
}
