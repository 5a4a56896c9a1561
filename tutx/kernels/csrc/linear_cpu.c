/* y = x @ W^T through a register-blocked micro-kernel, with W packed once into column tiles.
 *
 * oneDNN's kernels reach about half of this CPU's multiply-add peak at a decode step's few dozen
 * rows (they are built for many rows); this kernel is the textbook register-blocked micro-kernel:
 *
 *   W [N, K] is packed once into tiles of NR = 64 output columns, [N / 64][K][64] (zeros past N),
 *   so that the 64 weights a step of k needs are one contiguous 256-byte line.
 *   A micro-kernel computes an MR x (NB vectors) block of y (MR <= 6 rows) in registers; for each
 *   k it loads the NB weight vectors once and multiplies them by each row's x[m][k] (a
 *   broadcast). Vectors are one register wide, and NB is what the register file holds: with
 *   AVX-512 a block is a whole tile (6 x 4 vectors of 16 floats); with AVX2 a tile is four
 *   blocks of 6 x 2 vectors of 8.
 *   Threads split the column tiles (each keeps its tiles of W in its own L2 cache) and walk all
 *   row blocks over the same tile.
 *
 * The weight vectors are read as values of an unaligned vector type: copied into an array with
 * memcpy, GCC kept the array on the stack and the loop stored and reloaded all four every k,
 * which held the kernel to ~73% of peak (PERF_NOTES.md, L31).
 *
 * Vectors are GCC/Clang vector types of one register's width (wider types are split badly: GCC kept
 * 16-float vectors on the stack under AVX2, at ~5 GFLOP/s). fp32 throughout; the
 * sums run over k in order, so results equal a plain dot product's up to float rounding.
 */
#include <stdint.h>
#include <string.h>

/* One vector register's floats, and vectors per block (NB): MR x NB accumulators, NB weights and a
 * broadcast must fit the register file, or the compiler keeps the accumulators on the stack. */
#if defined(__AVX512F__)
#define LANES 16         /* 32 zmm: 6 x 4 accumulators + 4 weights + 1 broadcast */
#define NB 4
#elif defined(__AVX__)
#define LANES 8          /* 16 ymm: 6 x 2 + 2 + 1 */
#define NB 2
#elif defined(__aarch64__)
#define LANES 4          /* 32 q registers: 6 x 4 + 4 + 1 */
#define NB 4
#else
#define LANES 4          /* 16 xmm: 6 x 2 + 2 + 1 */
#define NB 2
#endif
#define NR 64            /* output columns per tile */
#define NV (NR / LANES)  /* vectors per tile */
#define MR 6             /* rows per micro-kernel call */

#define HALF (NR / 2)    /* a gated tile: 32 gate columns, then the 32 up columns that pair with them */

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));
typedef float vf_unaligned __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));

#include "vec_math.h"

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

/* w [2 I, K] (gate rows, then up rows: a fused gate|up projection) -> packed [ceil(I / 32), K, 64]:
 * tile t holds gate columns 32 t .. 32 t + 31 and then the up columns with the same indices, so
 * that one block has both halves of silu(gate) * up in registers. Zeros past I. */
void tutx_pack_gated(const float *restrict w, float *restrict packed, int64_t I, int64_t K)
{
    const int64_t tiles = (I + HALF - 1) / HALF;
    for (int64_t t = 0; t < tiles; t++)
        for (int64_t k = 0; k < K; k++) {
            float *dst = packed + (t * K + k) * NR;
            for (int64_t j = 0; j < HALF; j++) {
                const int64_t i = t * HALF + j;
                dst[j] = i < I ? w[i * K + k] : 0.0f;
                dst[HALF + j] = i < I ? w[(I + i) * K + k] : 0.0f;
            }
        }
}

/* One block: rows m0 .. m0 + mr - 1 of y, NB vectors of a tile from wt, over all K. Plain: the NB
 * vectors are consecutive columns, NB * LANES of y (ncols of them valid). Gated: the first NB / 2
 * are gate columns and the rest the up columns HALF further on, and y gets silu(gate) * up, NB / 2
 * vectors (ncols valid). Nothing is stored when ncols <= 0. `mr` and `gated` are literals at each
 * call site, so the loops unroll and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void block(
    const float *restrict x, int64_t ldx, const float *restrict wt, int64_t K, const float *restrict bias,
    float *restrict y, int64_t ldy, int64_t ncols, const int mr, const int gated)
{
    vf acc[MR][NB];
#pragma GCC unroll 6
    for (int m = 0; m < MR; m++)
        for (int v = 0; v < NB; v++) acc[m][v] = (vf){0};
    for (int64_t k = 0; k < K; k++) {
        vf w[NB];
        for (int v = 0; v < NB; v++) {
            const int off = gated && v >= NB / 2 ? HALF + (v - NB / 2) * LANES : v * LANES;
            w[v] = *(const vf_unaligned *)(wt + k * NR + off);
        }
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            const float xv = x[m * ldx + k];
            for (int v = 0; v < NB; v++) acc[m][v] += xv * w[v];
        }
    }
    if (bias != NULL && !gated) {
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++)
            for (int v = 0; v < NB; v++) acc[m][v] += *(const vf_unaligned *)(bias + v * LANES);
    }
    const int nout = gated ? NB / 2 : NB;  /* vectors of y per row */
    if (gated) {  /* silu(g) * u = g / (1 + exp(-g)) * u */
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++)
            for (int v = 0; v < NB / 2; v++) {
                const vf g = acc[m][v];
                acc[m][v] = g / (1.0f + vexp(-g)) * acc[m][v + NB / 2];
            }
    }
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++) {
        if (ncols >= nout * LANES) {
            for (int v = 0; v < nout; v++) *(vf_unaligned *)(y + m * ldy + v * LANES) = acc[m][v];
        } else if (ncols > 0) {  /* the end of an N that is not a multiple of the tile (through a buffer: acc stays in registers) */
            float buf[NB * LANES];
            for (int v = 0; v < nout; v++) memcpy(buf + v * LANES, &acc[m][v], sizeof(vf));
            memcpy(y + m * ldy, buf, sizeof(float) * ncols);
        }
    }
}

/* All row blocks of one tile's columns from wt (see block); the last rows with literal counts, so
 * that those blocks unroll too. */
static inline __attribute__((always_inline)) void rows(
    const float *restrict x, int64_t ldx, const float *restrict wt, int64_t K, const float *restrict bias,
    float *restrict y, int64_t ldy, int64_t M, int64_t ncols, const int gated)
{
    int64_t m0 = 0;
    for (; m0 + MR <= M; m0 += MR)
        block(x + m0 * ldx, ldx, wt, K, bias, y + m0 * ldy, ldy, ncols, MR, gated);
    const float *xr = x + m0 * ldx;
    float *yr = y + m0 * ldy;
    switch (M - m0) {
    case 1: block(xr, ldx, wt, K, bias, yr, ldy, ncols, 1, gated); break;
    case 2: block(xr, ldx, wt, K, bias, yr, ldy, ncols, 2, gated); break;
    case 3: block(xr, ldx, wt, K, bias, yr, ldy, ncols, 3, gated); break;
    case 4: block(xr, ldx, wt, K, bias, yr, ldy, ncols, 4, gated); break;
    case 5: block(xr, ldx, wt, K, bias, yr, ldy, ncols, 5, gated); break;
    default: break;
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
        const int64_t tile_cols = N - t * NR < NR ? N - t * NR : NR;
        for (int64_t c0 = 0; c0 < tile_cols; c0 += NB * LANES)  /* one pass with AVX-512, four with AVX2 */
            rows(x, ldx, packed + t * K * NR + c0, K, bias ? bias + t * NR + c0 : NULL, y + t * NR + c0, ldy, M,
                 tile_cols - c0, 0);
    }
}

/* silu(x @ Wg^T) * (x @ Wu^T) in one pass, with W = [Wg; Wu] packed by tutx_pack_gated: the MLP of
 * a Llama layer without its [M, 2 I] intermediate. x [M, K] (row stride ldx), y [M, I] (row stride ldy). */
void tutx_linear_silu_f32(const float *restrict x, int64_t ldx, const float *restrict packed, float *restrict y,
                          int64_t ldy, int64_t M, int64_t I, int64_t K, int num_threads)
{
    const int64_t tiles = (I + HALF - 1) / HALF;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (M * I * K >= (1 << 17))
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t tile_cols = I - t * HALF < HALF ? I - t * HALF : HALF;
        for (int64_t c0 = 0; c0 < tile_cols; c0 += NB / 2 * LANES)
            rows(x, ldx, packed + t * K * NR + c0, K, NULL, y + t * HALF + c0, ldy, M, tile_cols - c0, 1);
    }
}

/* The vector width this library was built for, in bits (512 with AVX-512): the engine picks its
 * row limit by it. */
int tutx_linear_vector_bits(void)
{
#if defined(__AVX512F__)
    return 512;
#elif defined(__AVX__)
    return 256;
#else
    return 128;
#endif
}
