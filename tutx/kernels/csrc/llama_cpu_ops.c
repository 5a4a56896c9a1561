/* The elementwise glue of a Llama decoder layer on the CPU, one call each instead of 5-14 PyTorch ops.
 *
 * A decode step of a small model on a CPU spends as much time dispatching small operators
 * (each a few microseconds of Python and ATen overhead) as computing them. These three kernels
 * do that glue in one pass each, in float32, with OpenMP over tokens:
 *
 *   tutx_add_rms_norm: h += x (optional), out = weight * (h * 1/sqrt(mean(h^2) + eps))
 *                      (Hugging Face's LlamaRMSNorm, in its order of operations);
 *   tutx_rope_store:   rotate q and k in place in the fused q|k|v projection output (rotary
 *                      embedding, "rotate half" convention) and write k and v into the KV pool slots;
 *   tutx_silu_mul:     out = silu(gate) * up from the fused gate|up projection output;
 *   tutx_argmax_rows:  each row's index of its largest value (greedy sampling: torch.argmax takes
 *                      ~170 us for 48 rows of a 4,096-token vocabulary, one scalar pass per row).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

void tutx_add_rms_norm(float *h, const float *x, const float *weight, float *out, int64_t T, int64_t H,
                       float eps, int num_threads)
{
#pragma omp parallel for num_threads(num_threads) schedule(static) if (T * H >= 32768)
    for (int64_t t = 0; t < T; t++) {
        float *ht = h + t * H;
        float ss = 0.0f;
        if (x != NULL) {
            const float *xt = x + t * H;
#pragma omp simd reduction(+:ss)
            for (int64_t i = 0; i < H; i++) {
                ht[i] += xt[i];
                ss += ht[i] * ht[i];
            }
        } else {
#pragma omp simd reduction(+:ss)
            for (int64_t i = 0; i < H; i++) ss += ht[i] * ht[i];
        }
        const float r = 1.0f / sqrtf(ss / (float)H + eps);
        float *ot = out + t * H;
#pragma omp simd
        for (int64_t i = 0; i < H; i++) ot[i] = weight[i] * (ht[i] * r);
    }
}

/* qkv [T, (Hq + 2 Hkv) * D] (rows contiguous); cos, sin [T, D]; pools [num_slots, Hkv, D]; slots [T].
 * keys_block_size > 0: k_pool holds its keys transposed within blocks of that many slots,
 * [num_blocks, Hkv, D, keys_block_size] (the layout paged_decode_cpu.c reads fastest).
 * Returns -1, or (touching nothing) the first t whose slot lies outside [0, num_slots). */
int64_t tutx_rope_store(float *qkv, const float *cos_t, const float *sin_t, float *k_pool, float *v_pool,
                        const int64_t *slots, int64_t num_slots, int64_t T, int64_t Hq, int64_t Hkv, int64_t D,
                        int64_t keys_block_size, int num_threads)
{
    for (int64_t t = 0; t < T; t++)
        if (slots[t] < 0 || slots[t] >= num_slots) return t;
    const int64_t half = D / 2, row = (Hq + 2 * Hkv) * D;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (T * row >= 32768)
    for (int64_t t = 0; t < T; t++) {
        float *r = qkv + t * row;
        const float *c = cos_t + t * D, *s = sin_t + t * D;
        for (int64_t h = 0; h < Hq + Hkv; h++) {  /* q heads, then k heads */
            float *x = r + h * D;
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                const float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * c[i] - x2 * s[i];
                x[i + half] = x2 * c[i + half] + x1 * s[i + half];
            }
        }
        float *vd = v_pool + slots[t] * Hkv * D;
        const float *ks = r + Hq * D, *vs = r + (Hq + Hkv) * D;
#pragma omp simd
        for (int64_t i = 0; i < Hkv * D; i++) vd[i] = vs[i];
        if (keys_block_size > 0) {  /* key element (h, d) of slot s: kt[s / bs][h][d][s % bs] */
            const int64_t bs = keys_block_size;
            float *kb = k_pool + (slots[t] / bs) * Hkv * D * bs + slots[t] % bs;
            for (int64_t i = 0; i < Hkv * D; i++) kb[i * bs] = ks[i];
        } else {
            float *kd = k_pool + slots[t] * Hkv * D;
#pragma omp simd
            for (int64_t i = 0; i < Hkv * D; i++) kd[i] = ks[i];
        }
    }
    return -1;
}

/* gate_up [T, 2 I] (gate then up); out [T, I]. The exponent is clamped: under -ffast-math the division
 * is a reciprocal estimate and a Newton step, which turns 1/inf (a gate below about -88.7) into NaN. */
void tutx_silu_mul(const float *gate_up, float *out, int64_t T, int64_t I, int num_threads)
{
#pragma omp parallel for num_threads(num_threads) schedule(static) if (T * I >= 32768)
    for (int64_t t = 0; t < T; t++) {
        const float *g = gate_up + t * 2 * I, *u = g + I;
        float *o = out + t * I;
#pragma omp simd
        for (int64_t i = 0; i < I; i++) o[i] = g[i] / (1.0f + expf(fminf(-g[i], 80.0f))) * u[i];
    }
}

/* x [R, C] (rows contiguous), C >= 1; out [R]: the first index of each row's maximum, or of its
 * first NaN when it has one (torch.argmax's answers, -0 equal to +0). Everything runs on the bits:
 * under -ffast-math the compiler may assume that no float is NaN or infinite. A float's bits map to
 * an unsigned key in the float order (negative: all bits flipped; positive: sign bit set). */
static inline uint32_t order_key(uint32_t b) { return (b & 0x80000000u) ? ~b : (b | 0x80000000u); }

void tutx_argmax_rows(const float *x, int64_t *out, int64_t R, int64_t C, int num_threads)
{
#pragma omp parallel for num_threads(num_threads) schedule(static) if (R * C >= (1 << 17))
    for (int64_t r = 0; r < R; r++) {
        const uint32_t *bits = (const uint32_t *)(x + r * C);
        uint32_t top = 0, nan = 0;
#pragma omp simd reduction(max:top) reduction(|:nan)
        for (int64_t i = 0; i < C; i++) {
            const uint32_t key = order_key(bits[i]);
            top = key > top ? key : top;
            nan |= (uint32_t)((bits[i] & 0x7fffffffu) > 0x7f800000u);
        }
        int64_t i = 0;
        if (nan) {  /* (NaN keys may win the max; the first NaN is the answer) */
            while ((bits[i] & 0x7fffffffu) <= 0x7f800000u) i++;
        } else if ((top & 0x7fffffffu) == 0) {  /* the maximum is a zero: -0 and +0 are equal */
            while (bits[i] & 0x7fffffffu) i++;
        } else {
            while (order_key(bits[i]) != top) i++;
        }
        out[r] = i;
    }
}
