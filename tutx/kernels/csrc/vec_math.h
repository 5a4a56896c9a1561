/* Vector math shared by the CPU kernels: per-lane select and exp, over GCC/Clang vector types.
 *
 * Include after defining `vf` (floats) and `vi` (32-bit ints) vector types of the same lane count.
 * The kernels' build cache hashes this header with each source (tutx/kernels/cpu_build.py).
 */
#ifndef TUTX_VEC_MATH_H
#define TUTX_VEC_MATH_H

static inline __attribute__((always_inline)) vf lane_select(vi mask, vf a, vf b)  /* mask ? a : b, per lane */
{
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* exp of every lane: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, p a degree-6 polynomial
 * (relative error ~2e-7); inputs below -87 give ~1e-38 (masked keys: -FLT_MAX). Written with
 * vector types so that it runs in full vectors on any CPU (libm's expf is scalar here). */
static inline __attribute__((always_inline)) vf vexp(vf x)
{
    const vf hi = (vf){0} + 88.0f, lo = (vf){0} - 87.0f;
    x = lane_select(x > hi, hi, x);
    x = lane_select(x < lo, lo, x);
    vf fn = x * 1.44269504088896341f;
    vi n = __builtin_convertvector(fn + lane_select(fn < (vf){0}, (vf){0} - 0.5f, (vf){0} + 0.5f), vi);
    fn = __builtin_convertvector(n, vf);
    vf r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    vf p = (vf){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return (vf)((vi)p + ((n) << 23));
}

#endif
