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

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef float vf_unaligned __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));

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

/* One block: rows m0 .. m0 + mr - 1 of y, NB * LANES columns of a tile from wt (ncols of them
 * valid: nothing is stored when ncols <= 0). `mr` is a literal at each call site, so the row loops
 * unroll and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void block(
    const float *restrict x, int64_t ldx, const float *restrict wt, int64_t K, const float *restrict bias,
    float *restrict y, int64_t ldy, int64_t ncols, const int mr)
{
    vf acc[MR][NB];
#pragma GCC unroll 6
    for (int m = 0; m < MR; m++)
        for (int v = 0; v < NB; v++) acc[m][v] = (vf){0};
    for (int64_t k = 0; k < K; k++) {
        vf w[NB];
        for (int v = 0; v < NB; v++) w[v] = *(const vf_unaligned *)(wt + k * NR + v * LANES);
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            const float xv = x[m * ldx + k];
            for (int v = 0; v < NB; v++) acc[m][v] += xv * w[v];
        }
    }
    if (bias != NULL) {
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++)
            for (int v = 0; v < NB; v++) acc[m][v] += *(const vf_unaligned *)(bias + v * LANES);
    }
#pragma GCC unroll 6
    for (int m = 0; m < mr; m++) {
        if (ncols >= NB * LANES) {
            for (int v = 0; v < NB; v++) *(vf_unaligned *)(y + m * ldy + v * LANES) = acc[m][v];
        } else if (ncols > 0) {  /* the end of an N that is not a multiple of 64 (through a buffer: acc stays in registers) */
            float buf[NB * LANES];
            for (int v = 0; v < NB; v++) memcpy(buf + v * LANES, &acc[m][v], sizeof(vf));
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
        const int64_t tile_cols = N - t * NR < NR ? N - t * NR : NR;
        for (int sub = 0; sub < NV / NB; sub++) {  /* one pass with AVX-512, four with AVX2 */
            const int64_t c0 = sub * NB * LANES, ncols = tile_cols - c0;
            if (ncols <= 0)
                break;
            const float *wt = packed + t * K * NR + c0, *bt = bias ? bias + t * NR + c0 : NULL;
            int64_t m0 = 0;
            for (; m0 + MR <= M; m0 += MR)
                block(x + m0 * ldx, ldx, wt, K, bt, y + m0 * ldy + t * NR + c0, ldy, ncols, MR);
            const float *xr = x + m0 * ldx;
            float *yr = y + m0 * ldy + t * NR + c0;
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
