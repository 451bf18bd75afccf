/* Per-example training (mini-batches of one row, plain SGD or Adam/AdamW): forward, loss, backward and
 * update fused, for one precision. Included twice by _kernels.h with REAL, FASTBP_UINT, FN, EXP, EXP1P,
 * TANH, FABS, SQRT, DOT and DOT4 defined.
 *
 * fastbp_train_rows_body: the same arithmetic as the general path of _core.pyx (dense_forward,
 * output_delta, dense_backward with update_in_place), written as one loop so that small networks pay no
 * call overhead per example: each weight row is read once in the backward sweep, which both propagates
 * the delta to the layer below (with the old weight) and applies the update. Serves per-example Adam, and
 * SGD on networks of more than FASTBP_WIDE_MAX_LAYERS layers.
 * fastbp_train_rows_wide: per-example SGD on every other network past the tiny sizes, the same updates
 * vectorised across output units (weights of wide layers transposed for the call).
 * fastbp_train_rows_small: tiny one-hidden-layer networks, the same updates regrouped for latency.
 * fastbp_activate_row: the activations of a whole layer as one SIMD sweep (no libm call), used by the
 * per-example loops; the mini-batch path keeps libm's tanh and the scalar fastbp_activate.
 *
 * The elementwise layer is written here once per precision and shared with _core.pyx's mini-batch path:
 * fastbp_activate (f(z)), fastbp_times_derivative (delta *= f'(z) from the output a) and
 * fastbp_output_delta_row (one row's loss and dL/dz, every loss). The tiny-network loop keeps its own
 * branch-free sigmoid (fastbp_activate_tiny), written for the latency of its chain.
 */

static inline REAL FN(fastbp_activate)(REAL z, int act)
{
    REAL e;
    switch (act) {
    case FASTBP_RELU:
        return z < 0 ? (REAL)0 : z;
    case FASTBP_SIGMOID:
        if (z >= 0)
            return (REAL)1 / ((REAL)1 + EXP(-z));
        e = EXP(z);
        return e / ((REAL)1 + e);
    case FASTBP_TANH:
        return TANH(z);
    default:
        return z;
    }
}

/* The same activations for the tiny-network loop (fastbp_train_rows_small), where the sigmoid lies on the
 * chain from one example to the next. Kept apart from fastbp_activate: in the general loop this sigmoid
 * makes gcc compile the ReLU sweep worse (64-32-10 at batch 1: about 530 ns per example against 400). */
static inline __attribute__((always_inline)) REAL FN(fastbp_activate_tiny)(REAL z, int act)
{
    REAL e;
    switch (act) {
    case FASTBP_RELU:
        return z < 0 ? (REAL)0 : z;
    case FASTBP_SIGMOID: {
        /* 1 / (1 + e^-z) for z >= 0, e^z / (1 + e^z) below, without a branch on the sign of z (it
         * mispredicts on the chain from one example to the next): the factor 1 or e is a bit select,
         * made while the division runs */
        union { REAL f; FASTBP_UINT u; } one, ev, factor;
        const FASTBP_UINT mask = (FASTBP_UINT)0 - (FASTBP_UINT)(z >= 0);
        REAL denominator; /* 1 + e, from the exp's last step */
        e = EXP1P(-FABS(z), &denominator);
        one.f = (REAL)1;
        ev.f = e;
        factor.u = (one.u & mask) | (ev.u & ~mask);
        return ((REAL)1 / denominator) * factor.f;
    }
    case FASTBP_TANH:
        return TANH(z);
    default:
        return z;
    }
}

/* delta * f'(z), with f' written through the activation's output a = f(z) */
static inline REAL FN(fastbp_derivative_times)(REAL delta, REAL a, int act)
{
    switch (act) {
    case FASTBP_RELU:
        return a > 0 ? delta : (REAL)0;
    case FASTBP_SIGMOID:
        return delta * (a * ((REAL)1 - a));
    case FASTBP_TANH:
        return delta * ((REAL)1 - a * a);
    default:
        return delta;
    }
}

static inline void FN(fastbp_times_derivative)(REAL *FASTBP_RESTRICT delta, const REAL *FASTBP_RESTRICT a,
                                               Py_ssize_t n, int act)
{
    Py_ssize_t i;
    switch (act) {
    case FASTBP_RELU:
        for (i = 0; i < n; i++)
            delta[i] = a[i] > 0 ? delta[i] : (REAL)0;
        break;
    case FASTBP_SIGMOID:
        for (i = 0; i < n; i++)
            delta[i] = delta[i] * (a[i] * ((REAL)1 - a[i]));
        break;
    case FASTBP_TANH:
        for (i = 0; i < n; i++)
            delta[i] = delta[i] * ((REAL)1 - a[i] * a[i]);
        break;
    default:
        break;
    }
}

/* The mini-batch sweeps around a layer's products, over `rows` rows of n values (row-major), cloned for
 * AVX-512/AVX2 (the Cython code around them is built for baseline x86-64): the bias and a ReLU or
 * identity activation after the forward product, the ReLU's mask on a delta, and the bias gradient's
 * column sums. Additions, compares and selects only (no multiply-add that a clone could contract), each
 * column summed in row order: the same bits as the scalar loops. Sigmoid and tanh layers keep
 * bias_activate and fastbp_times_derivative, as before. */
FASTBP_CLONES static void FN(fastbp_bias_relu_rows)(REAL *FASTBP_RESTRICT out, const REAL *FASTBP_RESTRICT bias,
                                                    Py_ssize_t rows, Py_ssize_t n, int relu)
{
    for (Py_ssize_t r = 0; r < rows; r++) {
        REAL *FASTBP_RESTRICT row = out + r * n;
        if (relu) {
            for (Py_ssize_t j = 0; j < n; j++) {
                const REAL v = row[j] + bias[j];
                row[j] = v < 0 ? (REAL)0 : v;
            }
        } else {
            for (Py_ssize_t j = 0; j < n; j++)
                row[j] = row[j] + bias[j];
        }
    }
}

FASTBP_CLONES static void FN(fastbp_relu_mask)(REAL *FASTBP_RESTRICT delta, const REAL *FASTBP_RESTRICT a,
                                               Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        delta[i] = a[i] > 0 ? delta[i] : (REAL)0;
}

FASTBP_CLONES static void FN(fastbp_column_sums)(REAL *FASTBP_RESTRICT sums, const REAL *FASTBP_RESTRICT x,
                                                 Py_ssize_t rows, Py_ssize_t n)
{
    memcpy(sums, x, n * sizeof(REAL));
    for (Py_ssize_t r = 1; r < rows; r++) {
        const REAL *FASTBP_RESTRICT row = x + r * n;
        for (Py_ssize_t j = 0; j < n; j++)
            sums[j] = sums[j] + row[j];
    }
}

/* Elementwise activations over a whole layer, written so that gcc vectorises them (no libm call, no
 * branch, no table: one SIMD sweep per 4/8/16 units). Used by the per-example loops, where on networks of
 * 8-128 units a scalar libm tanh or exp per unit costs more than the layer's multiply-adds.
 *
 * exp and expm1 of x in [lo, 0] (lo: -708 in double, -87 in float, so that the scale 2^m is normal):
 * x = m ln2 + r with |r| <= ln2/2 (ln2 split in two so that m ln2 is exact), expm1(r) as its Taylor
 * polynomial (degree 13 in double, 8 in float: truncation below half an ulp), 2^m from the integer bits of
 * the rounded m. exp(x) = 2^m + 2^m q and expm1(x) = (2^m - 1) + 2^m q: the first term is exact (m = 0:
 * 0; m = -1: -1/2; ...), so expm1 keeps its relative accuracy near 0, which the tanh needs. Within a few
 * ulp of the exact values, like libm's, not equal to them bit for bit. */
static inline __attribute__((always_inline))
REAL FN(fastbp_expm1_core)(REAL x, REAL *scale_out)
{
    const int dbl = sizeof(REAL) == 8;
    const REAL shifter = dbl ? (REAL)6755399441055744.0 : (REAL)12582912.0f; /* 1.5 * 2^52, 1.5 * 2^23 */
    const REAL kf = x * (REAL)1.4426950408889634 + shifter;
    const REAL m = kf - shifter;
    const REAL r = dbl ? (x - m * (REAL)0.6931471803691238) - m * (REAL)1.9082149292705877e-10
                       : (x - m * (REAL)0.693145751953125f) - m * (REAL)1.428606765330187e-06f;
    REAL q;
    if (dbl)
        q = r * (1 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (1.0 / 720
            + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800
            + r * (1.0 / 39916800 + r * (1.0 / 479001600 + r * (1.0 / 6227020800.0)))))))))))));
    else
        q = r * (1 + r * ((REAL)0.5 + r * ((REAL)(1.0 / 6) + r * ((REAL)(1.0 / 24) + r * ((REAL)(1.0 / 120)
            + r * ((REAL)(1.0 / 720) + r * ((REAL)(1.0 / 5040) + r * (REAL)(1.0 / 40320))))))));
    union { REAL f; FASTBP_UINT u; } k, scale;
    k.f = kf;
    /* the low mantissa bits of kf hold m: shifted into the exponent field, plus the bias */
    scale.u = (k.u << (dbl ? 52 : 23)) + ((FASTBP_UINT)(dbl ? 1023 : 127) << (dbl ? 52 : 23));
    *scale_out = scale.f;
    return q;
}

/* a[j] = f(z[j]) for j < n. The sigmoid goes back to the scalar fastbp_activate for NaN and for
 * |z| beyond the fast exp's range (results below the smallest normal number), rare enough to cost
 * nothing; the tanh redoes only NaN (|z| > 20 is exactly +-1). */
static inline __attribute__((always_inline))
void FN(fastbp_activate_row)(REAL *FASTBP_RESTRICT a, const REAL *FASTBP_RESTRICT z,
                                           Py_ssize_t n, int act)
{
    const int dbl = sizeof(REAL) == 8;
    Py_ssize_t j;
    switch (act) {
    case FASTBP_RELU:
        for (j = 0; j < n; j++)
            a[j] = z[j] < 0 ? (REAL)0 : z[j];
        break;
    case FASTBP_SIGMOID: {
        /* |z| clamped to the fast exp's range in the integer domain (a floating-point select stops gcc
         * vectorising the loop for AVX2); NaN, infinities and the clamped tail are redone afterwards */
        union { REAL f; FASTBP_UINT u; } lim;
        lim.f = dbl ? (REAL)708 : (REAL)87;
        FASTBP_UINT slow = 0;
#pragma omp simd reduction(|:slow)
        for (j = 0; j < n; j++) {
            union { REAL f; FASTBP_UINT u; } t;
            t.f = FABS(z[j]);
            slow |= (FASTBP_UINT)(t.u > lim.u);
            t.u = t.u > lim.u ? lim.u : t.u;
            REAL scale;
            const REAL q = FN(fastbp_expm1_core)(-t.f, &scale);
            const REAL e = scale + scale * q;
            a[j] = (z[j] >= 0 ? (REAL)1 : e) / ((REAL)1 + e);
        }
        if (slow)
            for (j = 0; j < n; j++)
                if (!(FABS(z[j]) <= lim.f))
                    a[j] = FN(fastbp_activate)(z[j], act);
        break;
    }
    case FASTBP_TANH: {
        /* tanh |z| = -expm1(-2|z|) / (2 + expm1(-2|z|)); |z| > 20 gives exactly 1, so |z| is clamped there
         * (in the integer domain, as above); NaN is redone afterwards */
        union { REAL f; FASTBP_UINT u; } lim, inf;
        lim.f = (REAL)20;
        inf.f = (REAL)INFINITY;
        FASTBP_UINT slow = 0;
#pragma omp simd reduction(|:slow)
        for (j = 0; j < n; j++) {
            union { REAL f; FASTBP_UINT u; } t;
            t.f = FABS(z[j]);
            slow |= (FASTBP_UINT)(t.u > inf.u);
            t.u = t.u > lim.u ? lim.u : t.u;
            REAL scale;
            const REAL q = FN(fastbp_expm1_core)(-2 * t.f, &scale);
            const REAL em = (scale - 1) + scale * q;
            a[j] = COPYSIGN(-em / (2 + em), z[j]);
        }
        if (slow)
            for (j = 0; j < n; j++)
                if (z[j] != z[j])
                    a[j] = z[j];
        break;
    }
    default:
        for (j = 0; j < n; j++)
            a[j] = z[j];
        break;
    }
}

/* The cross-entropy of one row from its softmax exponentials, which `delta` holds on entry
 * (exp(z_k - max z), by fastbp_output_delta_row or, for a whole mini-batch, fastbp_softmax_exps): returns
 * `total` plus the row's loss and writes delta = scale * dL/dz.
 * -sum_k y_k log softmax(z)_k = logsumexp(z) sum_k y_k - sum_k y_k z_k; grad softmax sum y - y */
static inline double FN(fastbp_cross_entropy_row)(const REAL *out, const REAL *y, Py_ssize_t K, REAL scale,
                                                  REAL *delta, double total)
{
    Py_ssize_t k;
    double m = out[0], s = 0.0, target_sum = 0.0, dot_yz = 0.0;
    for (k = 1; k < K; k++)
        if (out[k] > m)
            m = out[k];
    for (k = 0; k < K; k++) {
        s += delta[k];
        target_sum += y[k];
        /* a zero target contributes nothing, even where z - m overflowed to -inf (0 * -inf is NaN) */
        if (y[k] != 0)
            dot_yz += y[k] * (out[k] - m);
    }
    total += log(s) * target_sum - dot_yz;
    for (k = 0; k < K; k++)
        delta[k] = ((REAL)(delta[k] / s) * (REAL)target_sum - y[k]) * scale;
    return total;
}

/* The output layer of one example, every loss: returns `total` plus the row's loss terms (the sum that
 * fastbp_loss_half / fastbp_loss_divisor turn into l_i) and writes delta = scale * dL/dz of the last
 * layer (through its activation for the squared-error losses; the logit losses need identity there).
 * Used by the mini-batch path of _core.pyx (one call per row) and by the per-example loop below (always
 * inlined: called from that loop's AVX-512/AVX2 builds it would run the baseline build, a call per example). */
static inline __attribute__((always_inline))
double FN(fastbp_output_delta_row)(const REAL *out, const REAL *y, Py_ssize_t K, int loss, int act, REAL scale,
                                   REAL *delta, double total)
{
    Py_ssize_t k;
    if (loss == FASTBP_CROSS_ENTROPY) {
        double m = out[0];
        for (k = 1; k < K; k++)
            if (out[k] > m)
                m = out[k];
        for (k = 0; k < K; k++)
            delta[k] = EXP((REAL)(out[k] - m));
        return FN(fastbp_cross_entropy_row)(out, y, K, scale, delta, total);
    }
    if (loss == FASTBP_BINARY_CROSS_ENTROPY) {
        /* max(z, 0) - z y + log(1 + exp(-|z|)): exp only of a non-positive number, finite for any z */
        for (k = 0; k < K; k++) {
            const double z = out[k];
            const REAL e = EXP(-FABS(out[k]));
            const REAL sig = out[k] >= 0 ? (REAL)1 / ((REAL)1 + e) : e / ((REAL)1 + e);
            total += (z > 0 ? z : 0.0) - z * (double)y[k] + log1p((double)e);
            delta[k] = (sig - y[k]) * scale;
        }
        return total;
    }
    if (loss == FASTBP_POISSON) {
        /* exp(z) - y z, with z the log of the rate (PyTorch's log_input=True, full=False) */
        for (k = 0; k < K; k++) {
            const double rate = exp((double)out[k]);
            total += rate - (double)y[k] * (double)out[k];
            delta[k] = ((REAL)rate - y[k]) * scale;
        }
        return total;
    }
    for (k = 0; k < K; k++) {
        const double diff = (double)out[k] - (double)y[k];
        total += diff * diff;
        delta[k] = scale * (out[k] - y[k]);
    }
    FN(fastbp_times_derivative)(delta, out, K, act);
    return total;
}

/* The per-step scalars of one Adam/AdamW update, formed in double as torch's Python floats (the same as
 * _core.pyx's optimizer_update passes to fastbp_adam). */
typedef struct {
    REAL param_scale, coupled_decay, w, one_minus_w, beta2, one_minus_beta2, eps, step_size, bias2_sqrt;
    int lerp_low, amsgrad;
    int settled; /* beta1^t and beta2^t <= 2^-54: 1 - beta^t rounds to 1 now and at every later step */
} FN(fastbp_adam_scalars);

static inline void FN(fastbp_adam_scalars_at)(const fastbp_adam_rows *a, long long t,
                                              FN(fastbp_adam_scalars) *c)
{
    c->param_scale = a->adamw ? (REAL)(1 - a->lr * a->weight_decay) : (REAL)1;
    c->coupled_decay = a->adamw ? (REAL)0 : (REAL)a->weight_decay;
    c->w = (REAL)(1 - a->beta1);
    c->one_minus_w = 1 - c->w;
    c->lerp_low = c->w < 0.5f;
    c->beta2 = (REAL)a->beta2;
    c->one_minus_beta2 = (REAL)(1 - a->beta2);
    c->eps = (REAL)a->eps;
    c->amsgrad = a->amsgrad;
    const double beta1_t = pow(a->beta1, (double)t), beta2_t = pow(a->beta2, (double)t);
    c->step_size = (REAL)(-(a->lr / (1 - beta1_t)));
    c->bias2_sqrt = (REAL)sqrt(1 - beta2_t);
    /* the bias corrections are exactly 1 from here on (beta^t only decreases), so the scalars stop
     * changing: the per-example loop skips the two pow calls, which on tiny nets cost as much as the rest */
    c->settled = beta1_t <= 0x1p-54 && beta2_t <= 0x1p-54;
}

/* One weight row's Adam update from the gradient d * in (one example's outer product: never stored),
 * element for element fastbp_adam's arithmetic. With DP (1: first row, 2: the others) the same sweep
 * also accumulates dp += w d with the weights before the update, the delta of the layer below. The
 * flags are constants after inlining, lerp_low and amsgrad loop-invariant (unswitched by gcc -O3). */
static inline __attribute__((always_inline))
void FN(fastbp_adam_row)(REAL *FASTBP_RESTRICT w, const REAL *FASTBP_RESTRICT in, REAL d, Py_ssize_t n,
                         REAL *FASTBP_RESTRICT dp, const int DP, REAL *FASTBP_RESTRICT m,
                         REAL *FASTBP_RESTRICT s, REAL *FASTBP_RESTRICT s_max,
                         const FN(fastbp_adam_scalars) *c)
{
    const REAL param_scale = c->param_scale, coupled_decay = c->coupled_decay, w1 = c->w;
    const REAL one_minus_w1 = c->one_minus_w, beta2 = c->beta2, one_minus_beta2 = c->one_minus_beta2;
    const REAL eps = c->eps, step_size = c->step_size, bias2_sqrt = c->bias2_sqrt;
    const int lerp_low = c->lerp_low, amsgrad = c->amsgrad;
    /* once the bias correction has settled at 1, dividing by it is exact and can go: one division less
     * per parameter (the loop's bottleneck with the other division and the square root) */
    const int unit_bias2 = bias2_sqrt == 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        const REAL old = w[i];
        if (DP == 1)
            dp[i] = old * d;
        else if (DP == 2)
            dp[i] += old * d;
        const REAL p = old * param_scale;
        const REAL g = d * in[i] + coupled_decay * p;
        const REAL m0 = m[i];
        const REAL mi = lerp_low ? m0 + w1 * (g - m0) : g - (g - m0) * one_minus_w1;
        REAL si = s[i] * beta2 + one_minus_beta2 * g * g;
        m[i] = mi;
        s[i] = si;
        if (amsgrad) {
            const REAL top = s_max[i];
            si = top >= si ? top : si;
            s_max[i] = si;
        }
        w[i] = p + step_size * mi / ((unit_bias2 ? SQRT(si) : SQRT(si) / bias2_sqrt) + eps);
    }
}

/* Train on rows start .. start+count-1 of the epoch's order (order == NULL: rows in storage order),
 * one SGD step per row, or with `adam` one Adam/AdamW step per row (state: its three rows of
 * adam->n_params values, laid out like params; the bias corrections of row e use step adam->step + e + 1).
 * Returns 0, or 1 when a loss is not finite (the step of that row is not taken). *loss_sum and *done
 * accumulate over the rows trained. Always inlined with a constant `adam`: the SGD loop has no Adam code. */
static inline __attribute__((always_inline))
int FN(fastbp_train_rows_body)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                               const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                               const fastbp_adam_rows *adam, REAL *state,
                               REAL *activations, REAL *delta_a, REAL *delta_b,
                               double *loss_sum, Py_ssize_t *done)
{
    const int L = p->n_layers;
    FN(fastbp_adam_scalars) c;
    c.settled = 0;
    REAL *const m_row = adam ? state : NULL;
    REAL *const s_row = adam ? state + adam->n_params : NULL;
    REAL *const s_max_row = adam ? state + 2 * adam->n_params : NULL;
    const Py_ssize_t n_in0 = p->sizes[0];
    const Py_ssize_t K = p->sizes[L];
    const int out_act = p->acts[L - 1];
    const REAL scale = (REAL)(fastbp_loss_numerator(p->loss) / fastbp_loss_divisor(p->loss, K));
    const double value_factor = fastbp_loss_half(p->loss);
    const double divisor = fastbp_loss_divisor(p->loss, K);
    /* Accumulate in locals: stores through *loss_sum or *done would alias the buffers. */
    double total_loss = 0.0;
    Py_ssize_t rows_done = 0;
    int status = 0;

    for (Py_ssize_t e = 0; e < count; e++) {
        const Py_ssize_t row = order ? order[start + e] : start + e;
        const REAL *x = X + row * n_in0;
        const REAL *y = Y + row * K;

        /* forward: a = f(W a_prev + b), one dot product per neuron */
        const REAL *a_prev = x;
        for (int l = 0; l < L; l++) {
            const Py_ssize_t n_in = p->sizes[l], n_out = p->sizes[l + 1];
            const REAL *W = params + p->w_off[l];
            const REAL *b = params + p->b_off[l];
            REAL *a = activations + p->act_off[l];
            REAL *z = delta_b; /* free until the backward pass */
            Py_ssize_t j = 0;
            if (n_in >= 8) {
                for (; j + 4 <= n_out; j += 4) {
                    DOT4(W + j * n_in, n_in, a_prev, z + j);
                    for (int q = 0; q < 4; q++)
                        z[j + q] += b[j + q];
                }
            }
            for (; j < n_out; j++)
                z[j] = b[j] + DOT(W + j * n_in, a_prev, n_in);
            FN(fastbp_activate_row)(a, z, n_out, p->acts[l]);
            a_prev = a;
        }

        /* loss and the output delta dL/dz */
        const REAL *out = activations + p->act_off[L - 1];
        REAL *delta = delta_a;
        double loss = FN(fastbp_output_delta_row)(out, y, K, p->loss, out_act, scale, delta, 0.0);
        loss = divisor == 1.0 ? value_factor * loss : loss / divisor;
        if (!isfinite(loss)) {
            status = 1;
            break;
        }

        /* backward: propagate with the old weights and update them in the same sweep */
        REAL *d_prev = delta_b;
        if (adam) {
            /* each weight row's gradient is d_j * in (bias: d_j); its Adam update reads and writes the
             * row's moments once, in the sweep that also propagates d_j through the old row */
            if (!c.settled)
                FN(fastbp_adam_scalars_at)(adam, adam->step + rows_done + 1, &c);
            for (int l = L - 1; l >= 0; l--) {
                const Py_ssize_t n_in = p->sizes[l], n_out = p->sizes[l + 1];
                const Py_ssize_t wo = p->w_off[l], bo = p->b_off[l];
                const REAL *in = l > 0 ? activations + p->act_off[l - 1] : x;
                /* the biases: gradient 1 * d_j, the same update as a weight row's */
                FN(fastbp_adam_row)(params + bo, delta, 1, n_out, NULL, 0, m_row + bo, s_row + bo,
                                    s_max_row + bo, &c);
                for (Py_ssize_t j = 0; j < n_out; j++) {
                    const Py_ssize_t o = wo + j * n_in;
                    if (l == 0)
                        FN(fastbp_adam_row)(params + o, in, delta[j], n_in, NULL, 0, m_row + o, s_row + o,
                                            s_max_row + o, &c);
                    else if (j == 0)
                        FN(fastbp_adam_row)(params + o, in, delta[j], n_in, d_prev, 1, m_row + o, s_row + o,
                                            s_max_row + o, &c);
                    else
                        FN(fastbp_adam_row)(params + o, in, delta[j], n_in, d_prev, 2, m_row + o, s_row + o,
                                            s_max_row + o, &c);
                }
                if (l > 0) {
                    FN(fastbp_times_derivative)(d_prev, in, n_in, p->acts[l - 1]);
                    REAL *swap = delta;
                    delta = d_prev;
                    d_prev = swap;
                }
            }
            total_loss += loss;
            rows_done += 1;
            continue;
        }
        for (int l = L - 1; l >= 0; l--) {
            const Py_ssize_t n_in = p->sizes[l], n_out = p->sizes[l + 1];
            REAL *W = params + p->w_off[l];
            REAL *b = params + p->b_off[l];
            const REAL *FASTBP_RESTRICT in = l > 0 ? activations + p->act_off[l - 1] : x;
            if (l > 0) {
                REAL *FASTBP_RESTRICT dp = d_prev;
                for (Py_ssize_t j = 0; j < n_out; j++) {
                    const REAL d = delta[j];
                    const REAL c = -lr * d;
                    REAL *FASTBP_RESTRICT w = W + j * n_in;
                    b[j] = b[j] - lr * d;
                    if (j == 0) {
                        /* the first row initialises d_prev: no separate zeroing pass */
                        for (Py_ssize_t i = 0; i < n_in; i++) {
                            dp[i] = w[i] * d;
                            w[i] += c * in[i];
                        }
                    } else {
                        for (Py_ssize_t i = 0; i < n_in; i++) {
                            dp[i] += w[i] * d;
                            w[i] += c * in[i];
                        }
                    }
                }
                FN(fastbp_times_derivative)(dp, in, n_in, p->acts[l - 1]);
                REAL *swap = delta;
                delta = d_prev;
                d_prev = swap;
            } else {
                for (Py_ssize_t j = 0; j < n_out; j++) {
                    const REAL d = delta[j];
                    const REAL c = -lr * d;
                    REAL *FASTBP_RESTRICT w = W + j * n_in;
                    b[j] = b[j] - lr * d;
                    for (Py_ssize_t i = 0; i < n_in; i++)
                        w[i] += c * in[i];
                }
            }
        }
        total_loss += loss;
        rows_done += 1;
    }
    *loss_sum += total_loss;
    *done += rows_done;
    return status;
}

/* Networks with one hidden layer and at most 4 units per layer (N0-N1-N2, compile-time constants) and a
 * squared-error loss get their own unrolled copy. On these networks each example's forward pass waits on
 * the previous example's update, so the loop is written for the latency of that chain:
 *
 * - parameters, activations and deltas live in local arrays, which the compiler keeps in registers once
 *   the loops are unrolled: no store-to-load round trip through memory from one example to the next;
 * - the hidden layer's update coefficient c_j = -lr * f'(z_j) * sum_k W2[k][j] d_k is formed as
 *   sum_k g[k][j] d_k, with g[k][j] = -lr * f'(z_j) * W2[k][j] computed (from the old W2) while the
 *   output layer's forward pass runs: one multiplication after d instead of three;
 * - the next example's hidden pre-activations are (b1 + W1 x') + c (1 + x . x'), which is
 *   (b1 + c) + (W1 + c x^T) x' = b1_new + W1_new x' regrouped: the first term uses the old weights and
 *   is computed off the chain, so only one multiply-add follows c; with one output, c (1 + x . x') is
 *   gs d with gs = (1 + x . x') g formed off the chain too, so one multiply-add follows d.
 * - the output pre-activation is accumulated from the bias, b2 + W2[0] h0 + ..., so that the last
 *   hidden unit's activation is followed by one multiply-add.
 *
 * The same updates as fastbp_train_rows_body, grouped differently: results agree to rounding (the tests
 * compare both with the NumPy twin and PyTorch). */
static inline __attribute__((always_inline))
int FN(fastbp_train_rows_small)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                double *loss_sum, Py_ssize_t *done,
                                const int N0, const int N1, const int N2)
{
    REAL W1[4][4], b1[4], W2[4][4], b2[4];
    REAL z[4], h[4], o[4], d[4], g[4][4], gs[4], c[4];
    const int act0 = p->acts[0], act1 = p->acts[1], mse = p->loss == FASTBP_MSE;
    const REAL scale = (REAL)(2.0 / (double)N2);
    REAL *const pb1 = params + N0 * N1, *const pW2 = pb1 + N1, *const pb2 = pW2 + N1 * N2;
    double total_loss = 0.0;
    Py_ssize_t rows_done = 0;
    int status = 0;

    if (count <= 0)
        return 0;
#pragma GCC unroll 4
    for (int j = 0; j < N1; j++) {
#pragma GCC unroll 4
        for (int i = 0; i < N0; i++)
            W1[j][i] = params[j * N0 + i];
        b1[j] = pb1[j];
    }
#pragma GCC unroll 4
    for (int k = 0; k < N2; k++) {
#pragma GCC unroll 4
        for (int j = 0; j < N1; j++)
            W2[k][j] = pW2[k * N1 + j];
        b2[k] = pb2[k];
    }

    const REAL *x = X + (order ? order[start] : start) * N0;
#pragma GCC unroll 4
    for (int j = 0; j < N1; j++) {
        REAL s = b1[j];
#pragma GCC unroll 4
        for (int i = 0; i < N0; i++)
            s += W1[j][i] * x[i];
        z[j] = s;
    }

    for (Py_ssize_t e = 0; e < count; e++) {
        const Py_ssize_t row = order ? order[start + e] : start + e;
        const REAL *y = Y + row * N2;
        x = X + row * N0;

        /* the next example's hidden pre-activations before this update, b1 + W1 x', and 1 + x.x' (x' = x
         * on the last row of the chunk: computed and not used) */
        const Py_ssize_t next = e + 1 < count ? e + 1 : e;
        const REAL *xn = X + (order ? order[start + next] : start + next) * N0;
        REAL overlap = 1, z_next[4];
#pragma GCC unroll 4
        for (int i = 0; i < N0; i++)
            overlap += x[i] * xn[i];
#pragma GCC unroll 4
        for (int j = 0; j < N1; j++) {
            REAL s = b1[j];
#pragma GCC unroll 4
            for (int i = 0; i < N0; i++)
                s += W1[j][i] * xn[i];
            z_next[j] = s;
        }

        /* forward; g (and with one output gs = (1 + x.x') g) from the old output weights while the output
         * layer computes */
#pragma GCC unroll 4
        for (int j = 0; j < N1; j++) {
            h[j] = FN(fastbp_activate_tiny)(z[j], act0);
#pragma GCC unroll 4
            for (int k = 0; k < N2; k++)
                g[k][j] = FN(fastbp_derivative_times)(-lr * W2[k][j], h[j], act0);
            if (N2 == 1)
                gs[j] = FN(fastbp_derivative_times)(-lr * overlap * W2[0][j], h[j], act0);
        }
#pragma GCC unroll 4
        for (int k = 0; k < N2; k++) {
            REAL s = b2[k];
#pragma GCC unroll 4
            for (int j = 0; j < N1; j++)
                s += W2[k][j] * h[j];
            o[k] = FN(fastbp_activate_tiny)(s, act1);
        }

        /* loss and the output delta dL/dz (scale is exactly 1 for half_sse: no multiplication there) */
        double loss = 0.0;
#pragma GCC unroll 4
        for (int k = 0; k < N2; k++) {
            const double diff = (double)o[k] - (double)y[k];
            loss += diff * diff;
            d[k] = FN(fastbp_derivative_times)(mse ? scale * (o[k] - y[k]) : o[k] - y[k], o[k], act1);
        }
        loss = mse ? loss / (double)N2 : 0.5 * loss;
        if (!isfinite(loss)) {
            status = 1;
            break;
        }

        /* backward: the hidden coefficients c (= -lr * hidden delta), then the output layer's update */
#pragma GCC unroll 4
        for (int j = 0; j < N1; j++) {
            REAL s = g[0][j] * d[0];
#pragma GCC unroll 4
            for (int k = 1; k < N2; k++)
                s += g[k][j] * d[k];
            c[j] = s;
        }
#pragma GCC unroll 4
        for (int k = 0; k < N2; k++) {
            const REAL ck = -lr * d[k];
            b2[k] += ck;
#pragma GCC unroll 4
            for (int j = 0; j < N1; j++)
                W2[k][j] += ck * h[j];
        }

        /* the next example's hidden pre-activations b1_new + W1_new x' = (b1 + W1 x') + c (1 + x.x'); with
         * one output c (1 + x.x') = gs d: one multiply-add after d. Then the hidden layer's update. */
#pragma GCC unroll 4
        for (int j = 0; j < N1; j++)
            z[j] = N2 == 1 ? z_next[j] + gs[j] * d[0] : z_next[j] + c[j] * overlap;
#pragma GCC unroll 4
        for (int j = 0; j < N1; j++) {
            b1[j] += c[j];
#pragma GCC unroll 4
            for (int i = 0; i < N0; i++)
                W1[j][i] += c[j] * x[i];
        }
        total_loss += loss;
        rows_done += 1;
    }

#pragma GCC unroll 4
    for (int j = 0; j < N1; j++) {
#pragma GCC unroll 4
        for (int i = 0; i < N0; i++)
            params[j * N0 + i] = W1[j][i];
        pb1[j] = b1[j];
    }
#pragma GCC unroll 4
    for (int k = 0; k < N2; k++) {
#pragma GCC unroll 4
        for (int j = 0; j < N1; j++)
            pW2[k * N1 + j] = W2[k][j];
        pb2[k] = b2[k];
    }
    *loss_sum += total_loss;
    *done += rows_done;
    return status;
}

/* One function per shape (its own register allocation: in one function with all 64 shapes inlined, gcc
 * kept the loop's values on the stack), each built twice as the tiny loop was. */
#define FASTBP_SMALL_SHAPE(a, b, c)                                                                    \
    FASTBP_CLONES_SCALAR __attribute__((noinline))                                                    \
    static int FN(fastbp_train_rows_small_##a##_##b##_##c)(const fastbp_plan *p, REAL *params,       \
        const REAL *X, const REAL *Y, const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count,    \
        REAL lr, double *loss_sum, Py_ssize_t *done)                                                  \
    {                                                                                                 \
        return FN(fastbp_train_rows_small)(p, params, X, Y, order, start, count, lr, loss_sum, done,    \
                                           a, b, c);                                                  \
    }
#define FASTBP_SMALL_SHAPES_C(a, b) \
    FASTBP_SMALL_SHAPE(a, b, 1) FASTBP_SMALL_SHAPE(a, b, 2) FASTBP_SMALL_SHAPE(a, b, 3) FASTBP_SMALL_SHAPE(a, b, 4)
#define FASTBP_SMALL_SHAPES_B(a) \
    FASTBP_SMALL_SHAPES_C(a, 1) FASTBP_SMALL_SHAPES_C(a, 2) FASTBP_SMALL_SHAPES_C(a, 3) FASTBP_SMALL_SHAPES_C(a, 4)
FASTBP_SMALL_SHAPES_B(1) FASTBP_SMALL_SHAPES_B(2) FASTBP_SMALL_SHAPES_B(3) FASTBP_SMALL_SHAPES_B(4)
#undef FASTBP_SMALL_SHAPE
#undef FASTBP_SMALL_SHAPES_C
#undef FASTBP_SMALL_SHAPES_B

#define FASTBP_SMALL_CASE(a, b, c)                                                                     \
    case ((a) - 1) * 16 + ((b) - 1) * 4 + ((c) - 1):                                                  \
        return FN(fastbp_train_rows_small_##a##_##b##_##c)(p, params, X, Y, order, start, count, lr,    \
                                                           loss_sum, done);
#define FASTBP_SMALL_CASES_C(a, b) \
    FASTBP_SMALL_CASE(a, b, 1) FASTBP_SMALL_CASE(a, b, 2) FASTBP_SMALL_CASE(a, b, 3) FASTBP_SMALL_CASE(a, b, 4)
#define FASTBP_SMALL_CASES_B(a) \
    FASTBP_SMALL_CASES_C(a, 1) FASTBP_SMALL_CASES_C(a, 2) FASTBP_SMALL_CASES_C(a, 3) FASTBP_SMALL_CASES_C(a, 4)

static int FN(fastbp_train_rows_tiny)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                      const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                      double *loss_sum, Py_ssize_t *done)
{
    switch ((p->sizes[0] - 1) * 16 + (p->sizes[1] - 1) * 4 + (p->sizes[2] - 1)) {
        FASTBP_SMALL_CASES_B(1) FASTBP_SMALL_CASES_B(2) FASTBP_SMALL_CASES_B(3) FASTBP_SMALL_CASES_B(4)
    default:
        return -1;
    }
}
#undef FASTBP_SMALL_CASE
#undef FASTBP_SMALL_CASES_C
#undef FASTBP_SMALL_CASES_B

/* Per-example SGD for networks past the tiny-kernel sizes, vectorised across output units.
 *
 * A layer with at least FASTBP_LANES outputs (one 64-byte vector) that is the first layer or not narrower
 * than its input works on a transposed copy of its weights, WT (n_in rows of n_out, each row padded with
 * zeros to a whole number of vectors, ld), made when the call starts and written back when it ends (on
 * networks of up to FASTBP_WIDE_MAX_WEIGHTS weights, where fit's calls cover hundreds to thousands of
 * examples, so the two copies cost about 1% or less). With that layout every loop over a
 * layer's outputs is a SIMD sweep:
 *  - forward: z = b + sum_i in_i WT[i], register tiles of two vectors of outputs, broadcast in_i, multiply-
 *    add; no horizontal sum per unit;
 *  - activation: a SIMD sweep over the layer (fastbp_activate_row);
 *  - backward: one pass over each row i of WT, which reads it once for the delta of the layer below
 *    (sum_j WT[i][j] d_j, with the old weights) and writes it once for the update WT[i][j] += (-lr d_j) in_i.
 * Other layers (the narrow output layer) keep the (out, in) rows of fastbp_train_rows_body: a dot product per
 * output forward, and a backward sweep along the inputs that is already a SIMD axpy.
 *
 * The same updates as fastbp_train_rows_body; the sums are grouped differently (forward: bias first, then
 * the inputs in two interleaved partial sums), so results agree with it and with the NumPy twin to rounding. */
#define FASTBP_LANES ((Py_ssize_t)(64 / sizeof(REAL)))
#define FASTBP_WIDE_MAX_LAYERS 8
#define FASTBP_WIDE_MAX_WEIGHTS 65536

static inline int FN(fastbp_wide_transposed)(const fastbp_plan *p, int l)
{
    const Py_ssize_t n_in = p->sizes[l], n_out = p->sizes[l + 1];
    return n_out >= FASTBP_LANES && (l == 0 || n_out >= n_in);
}

/* z[0 .. ld) = b + WT^T in for one transposed layer (z past n_out: garbage, never used) */
static inline __attribute__((always_inline))
void FN(fastbp_wide_forward)(const REAL *FASTBP_RESTRICT WT, Py_ssize_t ld, const REAL *FASTBP_RESTRICT b,
                             const REAL *FASTBP_RESTRICT in, Py_ssize_t n_in, Py_ssize_t n_out,
                             REAL *FASTBP_RESTRICT z)
{
    enum { T = 2 * (64 / sizeof(REAL)) };
    for (Py_ssize_t j0 = 0; j0 < ld; j0 += T) {
        /* a tile of T outputs: two accumulators per output (even and odd inputs) keep the multiply-adds
         * independent; a last tile of one vector reads one vector past its row (the next row, or the
         * padding at the end of the buffer) and stores only what is used */
        REAL s0[T], s1[T];
        const REAL *w = WT + j0;
#pragma omp simd
        for (int t = 0; t < T; t++) {
            s0[t] = 0;
            s1[t] = 0;
        }
        Py_ssize_t i = 0;
        for (; i + 2 <= n_in; i += 2) {
            const REAL x0 = in[i], x1 = in[i + 1];
            const REAL *w0 = w + i * ld, *w1 = w0 + ld;
#pragma omp simd
            for (int t = 0; t < T; t++) {
                s0[t] += x0 * w0[t];
                s1[t] += x1 * w1[t];
            }
        }
        if (i < n_in) {
            const REAL x0 = in[i];
            const REAL *w0 = w + i * ld;
#pragma omp simd
            for (int t = 0; t < T; t++)
                s0[t] += x0 * w0[t];
        }
        const Py_ssize_t m = ld - j0 < T ? ld - j0 : T;
        const Py_ssize_t valid = n_out - j0 < m ? n_out - j0 : m;
        for (Py_ssize_t t = 0; t < valid; t++)
            z[j0 + t] = b[j0 + t] + (s0[t] + s1[t]);
    }
}

FASTBP_CLONES
static int FN(fastbp_train_rows_wide)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                      const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                      REAL *activations, double *loss_sum, Py_ssize_t *done)
{
    const int L = p->n_layers;
    Py_ssize_t ld[FASTBP_WIDE_MAX_LAYERS], wt_off[FASTBP_WIDE_MAX_LAYERS];
    int transposed[FASTBP_WIDE_MAX_LAYERS];
    Py_ssize_t total = 0, max_ld = 0;
    const Py_ssize_t T = 2 * FASTBP_LANES;
    /* The choice depends on the network only, never on `count`: a call of one example (train_step) must do
     * the same arithmetic as a call of thousands (fit), bit for bit. The two copies cost about one example's
     * update; _core.pyx sizes calls by work, so networks up to FASTBP_WIDE_MAX_WEIGHTS weights get calls of
     * at least ~100 examples in fit, where the copies are lost in the noise. */
    Py_ssize_t weights = 0;
    for (int l = 0; l < L; l++)
        weights += p->sizes[l] * p->sizes[l + 1];
    for (int l = 0; l < L; l++) {
        const Py_ssize_t n_out = p->sizes[l + 1];
        transposed[l] = weights <= FASTBP_WIDE_MAX_WEIGHTS && FN(fastbp_wide_transposed)(p, l);
        ld[l] = transposed[l] ? (n_out + FASTBP_LANES - 1) / FASTBP_LANES * FASTBP_LANES : n_out;
        wt_off[l] = total;
        if (transposed[l])
            total += p->sizes[l] * ld[l];
        if (ld[l] > max_ld)
            max_ld = ld[l];
        if (p->sizes[l] > max_ld)
            max_ld = p->sizes[l];
    }
    max_ld = (max_ld + FASTBP_LANES - 1) / FASTBP_LANES * FASTBP_LANES;
    /* WT blocks (plus one tile of padding that the forward tiles may read), z, and two deltas */
    const Py_ssize_t n_scratch = total + T + 3 * (max_ld + T);
    REAL *scratch = (REAL *)calloc((size_t)n_scratch + 16, sizeof(REAL));
    if (scratch == NULL)
        return -2;
    REAL *const wt_base = (REAL *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    REAL *const z = wt_base + total + T;
    REAL *delta = z + max_ld + T;
    REAL *d_prev = delta + max_ld + T;
    for (int l = 0; l < L; l++) {
        if (!transposed[l])
            continue;
        const Py_ssize_t n_in = p->sizes[l], n_out = p->sizes[l + 1];
        const REAL *W = params + p->w_off[l];
        REAL *WT = wt_base + wt_off[l];
        for (Py_ssize_t j = 0; j < n_out; j++)
            for (Py_ssize_t i = 0; i < n_in; i++)
                WT[i * ld[l] + j] = W[j * n_in + i];
    }

    const Py_ssize_t n_in0 = p->sizes[0];
    const Py_ssize_t K = p->sizes[L];
    const int out_act = p->acts[L - 1];
    const REAL scale = (REAL)(fastbp_loss_numerator(p->loss) / fastbp_loss_divisor(p->loss, K));
    const double value_factor = fastbp_loss_half(p->loss);
    const double divisor = fastbp_loss_divisor(p->loss, K);
    double total_loss = 0.0;
    Py_ssize_t rows_done = 0;
    int status = 0;

    for (Py_ssize_t e = 0; e < count; e++) {
        const Py_ssize_t row = order ? order[start + e] : start + e;
        const REAL *x = X + row * n_in0;
        const REAL *y = Y + row * K;

        /* forward */
        const REAL *a_prev = x;
        for (int l = 0; l < L; l++) {
            const Py_ssize_t n_in = p->sizes[l], n_out = p->sizes[l + 1];
            const REAL *b = params + p->b_off[l];
            REAL *a = activations + p->act_off[l];
            if (transposed[l]) {
                FN(fastbp_wide_forward)(wt_base + wt_off[l], ld[l], b, a_prev, n_in, n_out, z);
            } else {
                const REAL *W = params + p->w_off[l];
                Py_ssize_t j = 0;
                if (n_in >= 8) {
                    for (; j + 4 <= n_out; j += 4) {
                        DOT4(W + j * n_in, n_in, a_prev, z + j);
                        for (int q = 0; q < 4; q++)
                            z[j + q] += b[j + q];
                    }
                }
                for (; j < n_out; j++)
                    z[j] = b[j] + DOT(W + j * n_in, a_prev, n_in);
            }
            FN(fastbp_activate_row)(a, z, n_out, p->acts[l]);
            a_prev = a;
        }

        /* loss and the output delta dL/dz */
        const REAL *out = activations + p->act_off[L - 1];
        double loss = FN(fastbp_output_delta_row)(out, y, K, p->loss, out_act, scale, delta, 0.0);
        loss = divisor == 1.0 ? value_factor * loss : loss / divisor;
        if (!isfinite(loss)) {
            status = 1;
            break;
        }
        if (transposed[L - 1])
            for (Py_ssize_t j = K; j < ld[L - 1]; j++)
                delta[j] = 0;

        /* backward: propagate with the old weights and update them in the same sweep */
        for (int l = L - 1; l >= 0; l--) {
            const Py_ssize_t n_in = p->sizes[l], n_out = p->sizes[l + 1];
            REAL *b = params + p->b_off[l];
            const REAL *FASTBP_RESTRICT in = l > 0 ? activations + p->act_off[l - 1] : x;
            REAL *FASTBP_RESTRICT dp = d_prev;
            for (Py_ssize_t j = 0; j < n_out; j++)
                b[j] = b[j] - lr * delta[j];
            if (transposed[l]) {
                const Py_ssize_t w_ld = ld[l];
                REAL *FASTBP_RESTRICT c = z; /* z is free now: the update coefficients -lr d, 0 past n_out */
                const REAL *FASTBP_RESTRICT d = delta;
#pragma omp simd
                for (Py_ssize_t j = 0; j < w_ld; j++)
                    c[j] = -lr * d[j];
                REAL *WT = wt_base + wt_off[l];
                if (l > 0) {
                    for (Py_ssize_t i = 0; i < n_in; i++) {
                        REAL *FASTBP_RESTRICT w = WT + i * w_ld;
                        const REAL xi = in[i];
                        REAL s = 0;
#pragma omp simd reduction(+:s)
                        for (Py_ssize_t j = 0; j < w_ld; j++) {
                            s += w[j] * d[j];
                            w[j] += c[j] * xi;
                        }
                        dp[i] = s;
                    }
                } else {
                    for (Py_ssize_t i = 0; i < n_in; i++) {
                        REAL *FASTBP_RESTRICT w = WT + i * w_ld;
                        const REAL xi = in[i];
#pragma omp simd
                        for (Py_ssize_t j = 0; j < w_ld; j++)
                            w[j] += c[j] * xi;
                    }
                }
            } else {
                REAL *W = params + p->w_off[l];
                for (Py_ssize_t j = 0; j < n_out; j++) {
                    const REAL d = delta[j];
                    const REAL c = -lr * d;
                    REAL *FASTBP_RESTRICT w = W + j * n_in;
                    if (l == 0) {
                        for (Py_ssize_t i = 0; i < n_in; i++)
                            w[i] += c * in[i];
                    } else if (j == 0) {
                        /* the first row initialises d_prev: no separate zeroing pass */
                        for (Py_ssize_t i = 0; i < n_in; i++) {
                            dp[i] = w[i] * d;
                            w[i] += c * in[i];
                        }
                    } else {
                        for (Py_ssize_t i = 0; i < n_in; i++) {
                            dp[i] += w[i] * d;
                            w[i] += c * in[i];
                        }
                    }
                }
            }
            if (l > 0) {
                FN(fastbp_times_derivative)(dp, in, n_in, p->acts[l - 1]);
                if (transposed[l - 1])
                    for (Py_ssize_t i = n_in; i < ld[l - 1]; i++)
                        dp[i] = 0;
                REAL *swap = delta;
                delta = d_prev;
                d_prev = swap;
            }
        }
        total_loss += loss;
        rows_done += 1;
    }

    for (int l = 0; l < L; l++) {
        if (!transposed[l])
            continue;
        const Py_ssize_t n_in = p->sizes[l], n_out = p->sizes[l + 1];
        REAL *W = params + p->w_off[l];
        const REAL *WT = wt_base + wt_off[l];
        for (Py_ssize_t j = 0; j < n_out; j++)
            for (Py_ssize_t i = 0; i < n_in; i++)
                W[j * n_in + i] = WT[i * ld[l] + j];
    }
    free(scratch);
    *loss_sum += total_loss;
    *done += rows_done;
    return status;
}

FASTBP_CLONES
static int FN(fastbp_train_rows_any)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                     const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                     REAL *activations, REAL *delta_a, REAL *delta_b,
                                     double *loss_sum, Py_ssize_t *done)
{
    return FN(fastbp_train_rows_body)(p, params, X, Y, order, start, count, lr, NULL, NULL, activations,
                                      delta_a, delta_b, loss_sum, done);
}

/* Per-example Adam/AdamW (any network; the tiny-network loop is SGD only). */
FASTBP_CLONES
static int FN(fastbp_train_rows_adam)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                      const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count,
                                      const fastbp_adam_rows *adam, REAL *state,
                                      REAL *activations, REAL *delta_a, REAL *delta_b,
                                      double *loss_sum, Py_ssize_t *done)
{
    return FN(fastbp_train_rows_body)(p, params, X, Y, order, start, count, 0, adam, state, activations,
                                      delta_a, delta_b, loss_sum, done);
}

static int FN(fastbp_train_rows)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                 const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                 REAL *activations, REAL *delta_a, REAL *delta_b,
                                 double *loss_sum, Py_ssize_t *done)
{
    if (p->n_layers == 2 && p->sizes[0] <= 4 && p->sizes[1] <= 4 && p->sizes[2] <= 4
            && (p->loss == FASTBP_HALF_SSE || p->loss == FASTBP_MSE))
        return FN(fastbp_train_rows_tiny)(p, params, X, Y, order, start, count, lr, loss_sum, done);
    if (p->n_layers <= FASTBP_WIDE_MAX_LAYERS) {
        const int status = FN(fastbp_train_rows_wide)(p, params, X, Y, order, start, count, lr, activations,
                                                       loss_sum, done);
        if (status != -2) /* -2: no memory for the transposed copies; the loop below needs none */
            return status;
    }
    return FN(fastbp_train_rows_any)(p, params, X, Y, order, start, count, lr, activations, delta_a,
                                     delta_b, loss_sum, done);
}
#undef FASTBP_LANES
#undef FASTBP_WIDE_MAX_LAYERS
#undef FASTBP_WIDE_MAX_WEIGHTS
