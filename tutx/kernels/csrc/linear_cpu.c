/* y = x @ W^T for the few-row products of a decode step, with W packed once into column tiles.
 *
 * A decode step multiplies B (a few dozen) rows by every weight matrix. oneDNN's kernels reach
 * about half of this CPU's multiply-add peak at those sizes (they are built for many rows); this
 * kernel is the textbook register-blocked micro-kernel instead, sized for few rows:
 *
 *   W [N, K] is packed once into tiles of NR = 64 output columns, [N / 64][K][64] (zeros past N),
 *   so that the 64 weights a step of k needs are one contiguous 256-byte line of four vectors.
 *   A micro-kernel computes an MR x 64 block of y (MR <= 6 rows): 24 vector accumulators in
 *   registers; for each k it loads the four weight vectors once and multiplies them by each
 *   row's x[m][k] (a broadcast): 24 multiply-adds per 4 loads.
 *   Threads split the column tiles (each keeps its tiles of W in its own L2 cache) and walk all
 *   row blocks over the same tile.
 *
 * Vectors are GCC/Clang vector types (AVX-512, AVX2 or NEON registers alike). fp32 throughout; the
 * sums run over k in order, so results equal a plain dot product's up to float rounding.
 */
#include <stdint.h>
#include <string.h>

#define LANES 16
#define NR 64            /* output columns per tile: four vectors */
#define NV (NR / LANES)
#define MR 6             /* rows per micro-kernel call: 6 x 4 accumulators + 4 weights + 1 broadcast registers */

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));

/* w [N, K] row-major -> packed [ceil(N / NR), K, NR], zero columns past N. */
void tutx_pack_weight(const float *restrict w, float *restrict packed, int64_t N, int64_t K)
{
    const int64_t tiles = (N + NR - 1) / NR;
    for (int64_t t = 0; t < tiles; t++)
        for (int64_t k = 0; k < K; k++) {
            float *dst = packed + (t * K + k) * NR;
            for (int64_t j = 0; j < NR; j++) {
                const int64_t n = t * NR + j;
                dst[j] = n < N ? w[n * K + k] : 0.0f;
            }
        }
}

/* One block: rows m0 .. m0 + mr - 1 of y, columns of tile t (ncols of them valid). `mr` is a
 * literal at each call site, so the row loops unroll and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void block(
    const float *restrict x, int64_t ldx, const float *restrict wt, int64_t K, const float *restrict bias,
    float *restrict y, int64_t ldy, int64_t ncols, const int mr)
{
    vf acc[MR][NV];
#pragma GCC unroll 6
    for (int m = 0; m < MR; m++)
        for (int v = 0; v < NV; v++) acc[m][v] = (vf){0};
    for (int64_t k = 0; k < K; k++) {
        vf w[NV];
        memcpy(w, wt + k * NR, sizeof(w));
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            const float xv = x[m * ldx + k];
            for (int v = 0; v < NV; v++) acc[m][v] += xv * w[v];
        }
    }
    if (bias != NULL) {
        vf b[NV];
        memcpy(b, bias, sizeof(b));
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++)
            for (int v = 0; v < NV; v++) acc[m][v] += b[v];
    }
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++) {
        if (ncols == NR) {
            for (int v = 0; v < NV; v++) memcpy(y + m * ldy + v * LANES, &acc[m][v], sizeof(vf));
        } else {  /* the last tile of an N that is not a multiple of 64 (through a buffer: acc stays in registers) */
            float buf[NR];
            for (int v = 0; v < NV; v++) memcpy(buf + v * LANES, &acc[m][v], sizeof(vf));
            memcpy(y + m * ldy, buf, sizeof(float) * ncols);
        }
    }
}

/* x [M, K] (row stride ldx), packed W for N outputs, bias [ceil(N / NR) * NR] (zero-padded) or NULL,
 * y [M, N] (row stride ldy). */
void tutx_linear_f32(const float *restrict x, int64_t ldx, const float *restrict packed, const float *restrict bias,
                     float *restrict y, int64_t ldy, int64_t M, int64_t N, int64_t K, int num_threads)
{
    const int64_t tiles = (N + NR - 1) / NR;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (M * N * K >= (1 << 18))
    for (int64_t t = 0; t < tiles; t++) {
        const float *wt = packed + t * K * NR, *bt = bias ? bias + t * NR : NULL;
        const int64_t ncols = N - t * NR < NR ? N - t * NR : NR;
        int64_t m0 = 0;
        for (; m0 + MR <= M; m0 += MR)
            block(x + m0 * ldx, ldx, wt, K, bt, y + m0 * ldy + t * NR, ldy, ncols, MR);
        const float *xr = x + m0 * ldx;
        float *yr = y + m0 * ldy + t * NR;
        switch (M - m0) {  /* the last rows: literal counts, so these blocks unroll too */
        case 1: block(xr, ldx, wt, K, bt, yr, ldy, ncols, 1); break;
        case 2: block(xr, ldx, wt, K, bt, yr, ldy, ncols, 2); break;
        case 3: block(xr, ldx, wt, K, bt, yr, ldy, ncols, 3); break;
        case 4: block(xr, ldx, wt, K, bt, yr, ldy, ncols, 4); break;
        case 5: block(xr, ldx, wt, K, bt, yr, ldy, ncols, 5); break;
        default: break;
        }
    }
}
