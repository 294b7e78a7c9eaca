/* The pointwise half of one LSTM time step, fused, for charlstm/model/lstm_bf16.py.

   Each function is one pass over a step's (B x H) cells and all four gates: read the
   recurrent GEMM's bf16 result, the step's slice of the window's input projection and the
   biases, and write everything the step produces. Without it the step is about ten separate
   ATen ops (and the backward's whole-window passes) over the same few hundred kilobytes.

   Gate order and layout are nn.LSTM's (rows i, f, g, o of a 4H vector). Arithmetic is fp32;
   bf16 appears only as the GEMM operands and results, converted exactly (bf16 -> fp32) or
   rounded to nearest-even (fp32 -> bf16, as torch's .to(torch.bfloat16)). tanh(z) is computed
   as 2 sigmoid(2z) - 1 (one inline vector exp serves every nonlinearity).

   Threads: OpenMP over column blocks, so each thread owns the same columns of every row (the
   bias-gradient sums have no races, and the result does not depend on timing). Built by
   charlstm/model/native.py with -ffast-math (so that min/max/floor vectorise); linked without it,
   so loading this library does not change the process's floating-point mode. */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t u) {
    uint32_t x = (uint32_t)u << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    x += 0x7FFFu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* exp(x) inline, for the vectorised loops: x = n ln2 + r (|r| <= ln2/2, ln2 split in two for
   the reduction), e^r by its degree-6 Taylor polynomial, 2^n from the exponent bits. Max
   relative error 2.3e-7 over [-87, 88] (2 ulp; measured against double exp), and without a
   call it takes ~0.6 of the time of glibc's vector expf in the cell. x is clamped so that the
   result stays finite and normal (fast-math assumes no infinities). */
static inline float exp_inline(float x) {
    x = fminf(fmaxf(x, -87.f), 88.f);
    float n = floorf(x * 1.44269504f + 0.5f);
    float r = fmaf(n, -0.693145751953125f, x);
    r = fmaf(n, -1.428606765330187e-06f, r);
    float p = 1.f / 720.f;
    p = fmaf(p, r, 1.f / 120.f);
    p = fmaf(p, r, 1.f / 24.f);
    p = fmaf(p, r, 1.f / 6.f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.f);
    p = fmaf(p, r, 1.f);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static inline float sigmoid(float z) { return 1.f / (1.f + exp_inline(-z)); }

#define COLUMNS 64 /* columns per thread block: a multiple of the 16-float vector */

/* Forward: z = lin + gx + bias (lin, gx bf16 (B x 4H), bias fp32 (4H)); the gates
   i f g o -> act (B x 4H); c = f c_prev + i g -> c; tanh(c) -> tc; h = o tanh(c) -> h (fp32)
   and hb (bf16: the next step's GEMM operand). */
void lstm_cell_forward(int threads, int B, int H, const uint16_t *lin, const uint16_t *gx,
                       const float *bias, const float *c_prev, float *act, float *c, float *tc,
                       float *h, uint16_t *hb) {
    int blocks = (H + COLUMNS - 1) / COLUMNS;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int q = 0; q < blocks; q++) {
        int j0 = q * COLUMNS, j1 = j0 + COLUMNS < H ? j0 + COLUMNS : H;
        for (int b = 0; b < B; b++) {
            size_t r4 = (size_t)b * 4 * H, r1 = (size_t)b * H;
            const uint16_t *l = lin + r4, *x = gx + r4;
            float *a = act + r4;
#pragma omp simd
            for (int j = j0; j < j1; j++) {
                float zi = bf16_to_f32(l[j]) + bf16_to_f32(x[j]) + bias[j];
                float zf = bf16_to_f32(l[H + j]) + bf16_to_f32(x[H + j]) + bias[H + j];
                float zg = bf16_to_f32(l[2 * H + j]) + bf16_to_f32(x[2 * H + j]) + bias[2 * H + j];
                float zo = bf16_to_f32(l[3 * H + j]) + bf16_to_f32(x[3 * H + j]) + bias[3 * H + j];
                float i = sigmoid(zi), f = sigmoid(zf), g = 2.f * sigmoid(2.f * zg) - 1.f;
                float o = sigmoid(zo);
                float cj = f * c_prev[r1 + j] + i * g;
                float t = 2.f * sigmoid(2.f * cj) - 1.f;
                float hj = o * t;
                a[j] = i;
                a[H + j] = f;
                a[2 * H + j] = g;
                a[3 * H + j] = o;
                c[r1 + j] = cj;
                tc[r1 + j] = t;
                h[r1 + j] = hj;
                hb[r1 + j] = f32_to_bf16(hj);
            }
        }
    }
}

/* Backward of one step, newest first: dh = dy + lin (lin = dG_{t+1} W_hh in bf16, or NULL at
   the window's last step); dc = carry + dh o (1 - tanh(c)^2); the gate gradients
   dG = (dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), dh tanh(c) o(1-o)) -> dgates (bf16,
   the weight GEMMs' operand) and summed over rows into dbias (fp32); carry <- dc f. */
void lstm_cell_backward(int threads, int B, int H, const uint16_t *lin, const float *dy,
                        const float *act, const float *c_prev, const float *tc, float *carry,
                        uint16_t *dgates, float *dbias) {
    int blocks = (H + COLUMNS - 1) / COLUMNS;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int q = 0; q < blocks; q++) {
        int j0 = q * COLUMNS, j1 = j0 + COLUMNS < H ? j0 + COLUMNS : H;
        for (int b = 0; b < B; b++) {
            size_t r4 = (size_t)b * 4 * H, r1 = (size_t)b * H;
            const float *a = act + r4;
            uint16_t *d = dgates + r4;
#pragma omp simd
            for (int j = j0; j < j1; j++) {
                float dh = dy[r1 + j] + (lin ? bf16_to_f32(lin[r1 + j]) : 0.f);
                float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j], t = tc[r1 + j];
                float dc = carry[r1 + j] + dh * o * (1.f - t * t);
                float di = dc * g * i * (1.f - i);
                float df = dc * c_prev[r1 + j] * f * (1.f - f);
                float dg = dc * i * (1.f - g * g);
                float dO = dh * t * o * (1.f - o);
                carry[r1 + j] = dc * f;
                d[j] = f32_to_bf16(di);
                d[H + j] = f32_to_bf16(df);
                d[2 * H + j] = f32_to_bf16(dg);
                d[3 * H + j] = f32_to_bf16(dO);
                dbias[j] += di;
                dbias[H + j] += df;
                dbias[2 * H + j] += dg;
                dbias[3 * H + j] += dO;
            }
        }
    }
}

/* Dropout with counter-based random bits, so that the backward regenerates the mask instead of
   storing it: element e of a call draws 32 bits from SplitMix64's output number k = e's pair
   index (Steele et al. 2014: seed + (k+1) * golden gamma, then the murmur3-style finaliser),
   is kept iff those bits >= threshold (= round(p 2^32)), and is then scaled by 1/(1-p). The
   elements are taken in blocks of 2 x 1024: in block q, output number q*1024 + j serves element
   j with its low half and element 1024 + j with its high half, so that both halves are
   contiguous stores, and the mask depends only on (seed, e), not on the thread count. The
   backward is this same call on the incoming gradient. */
#define DROP_HALF 1024

static inline uint64_t splitmix64(uint64_t seed, uint64_t k) {
    uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void dropout_apply(int threads, int64_t n, uint64_t seed, uint32_t threshold, float scale,
                   const float *x, float *out) {
    int64_t blocks = (n + 2 * DROP_HALF - 1) / (2 * DROP_HALF);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t q = 0; q < blocks; q++) {
        int64_t base = q * 2 * DROP_HALF;
        int64_t m = n - base < 2 * DROP_HALF ? n - base : 2 * DROP_HALF;
        int64_t half = (m + 1) / 2, rest = m - half;
        const float *xa = x + base, *xb = x + base + half;
        float *oa = out + base, *ob = out + base + half;
        uint64_t k0 = (uint64_t)q * DROP_HALF;
#pragma omp simd
        for (int64_t j = 0; j < rest; j++) {
            uint64_t z = splitmix64(seed, k0 + (uint64_t)j);
            oa[j] = (uint32_t)z >= threshold ? xa[j] * scale : 0.f;
            ob[j] = (uint32_t)(z >> 32) >= threshold ? xb[j] * scale : 0.f;
        }
        if (half > rest) { /* an odd block (the call's last): its middle element */
            uint64_t z = splitmix64(seed, k0 + (uint64_t)rest);
            oa[rest] = (uint32_t)z >= threshold ? xa[rest] * scale : 0.f;
        }
    }
}
