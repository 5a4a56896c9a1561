/* Paged decode attention on the CPU, reading the KV pool in place (no gather).
 *
 * One query token per sequence. q [B, Hq, D]; k_pool, v_pool [num_blocks, block_size, Hkv, D];
 * block_tables [B, W] (int32; entries past ceil(length / block_size) are never read);
 * table_of_row [B] (int32) or NULL: row b reads block_tables[table_of_row[b]] (rows of one prompt
 * share their sequence's table: a prefill is B = its tokens, each attending to its own length);
 * lengths [B] (int32, in [1, W * block_size]); out [B, Hq, D]. All float32, contiguous.
 *
 * Work item = (sequence b, KV head h): its G = Hq / Hkv query heads share every key and value
 * row they read. Two passes over the sequence's pages: scores s[g][t] = scale * q_g . k_t, then
 * softmax over t and out_g = sum_t p[g][t] * v_t. Items run in parallel (OpenMP); the inner
 * loops over D are `omp simd` reductions that the compiler vectorizes.
 *
 * HEAD_DIM is fixed when the library is built (tutx.kernels.cpu_build compiles one library per
 * head dimension, like a Triton constexpr): with D known the dot products unroll into a few
 * vector multiply-adds, 3x faster than with D read at run time (measured, D = 32).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GROUP 64
#ifndef HEAD_DIM
#error "HEAD_DIM must be defined (-DHEAD_DIM=...)"
#endif

int tutx_paged_decode_f32(const float *restrict q, const float *restrict k_pool, const float *restrict v_pool,
                          const int32_t *restrict block_tables, const int32_t *restrict table_of_row,
                          const int32_t *restrict lengths,
                          float *restrict out,
                          int64_t B, int64_t Hq, int64_t Hkv, int64_t head_dim, int64_t block_size, int64_t W,
                          float scale, int num_threads)
{
    const int64_t G = Hq / Hkv, D = HEAD_DIM;
    if (G > MAX_GROUP || G * Hkv != Hq || head_dim != HEAD_DIM) return 1;
    int status = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(sizeof(float) * G * W * block_size);  /* lengths <= W * block_size */
        if (scores == NULL) {
#pragma omp atomic write
            status = 2;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < B * Hkv; item++) {
            if (scores == NULL) continue;
            const int64_t b = item / Hkv, h = item % Hkv;
            const int64_t L = lengths[b];
            const int32_t *table = block_tables + (table_of_row ? (int64_t)table_of_row[b] : b) * W;
            const float *qb = q + (b * Hq + h * G) * D;  /* the group's G query rows */
            float mx[MAX_GROUP];
            for (int64_t g = 0; g < G; g++) mx[g] = -FLT_MAX;
            /* pass 1: scores, and their max per query head */
            for (int64_t t = 0; t < L; t++) {
                const float *kr = k_pool + (((int64_t)table[t / block_size] * block_size + t % block_size) * Hkv + h) * D;
                for (int64_t g = 0; g < G; g++) {
                    const float *qr = qb + g * D;
                    float s = 0.0f;
#pragma omp simd reduction(+:s)
                    for (int64_t d = 0; d < D; d++) s += qr[d] * kr[d];
                    s *= scale;
                    scores[g * L + t] = s;
                    if (s > mx[g]) mx[g] = s;
                }
            }
            /* softmax numerators and sums */
            float sum[MAX_GROUP];
            for (int64_t g = 0; g < G; g++) {
                float *sg = scores + g * L, m = mx[g], acc = 0.0f;
#pragma omp simd reduction(+:acc)
                for (int64_t t = 0; t < L; t++) {
                    sg[t] = expf(sg[t] - m);
                    acc += sg[t];
                }
                sum[g] = acc;
            }
            /* pass 2: weighted sum of the value rows */
            float *ob = out + (b * Hq + h * G) * D;
            memset(ob, 0, sizeof(float) * G * D);
            for (int64_t t = 0; t < L; t++) {
                const float *vr = v_pool + (((int64_t)table[t / block_size] * block_size + t % block_size) * Hkv + h) * D;
                for (int64_t g = 0; g < G; g++) {
                    const float p = scores[g * L + t];
                    float *og = ob + g * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) og[d] += p * vr[d];
                }
            }
            for (int64_t g = 0; g < G; g++) {
                const float inv = 1.0f / sum[g];
                float *og = ob + g * D;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) og[d] *= inv;
            }
        }
        free(scores);
    }
    return status;
}

