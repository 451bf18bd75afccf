/* Per-example SGD (mini-batches of one row, plain SGD): forward, loss, backward and update fused, for
 * one precision. Included twice by _kernels.h with REAL, FASTBP_UINT, FN, EXP, EXP1P, TANH, FABS, DOT and
 * DOT4 defined.
 *
 * fastbp_train_rows_body: the same arithmetic as the general path of _core.pyx (dense_forward,
 * output_delta, dense_backward with update_in_place), written as one loop so that small networks pay no
 * call overhead per example: each weight row is read once in the backward sweep, which both propagates
 * the delta to the layer below (with the old weight) and applies the update.
 * fastbp_train_rows_small: tiny one-hidden-layer networks, the same updates regrouped for latency.
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
static inline REAL FN(fastbp_activate_tiny)(REAL z, int act)
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

/* The output layer of one example, every loss: returns `total` plus the row's loss terms (the sum that
 * fastbp_loss_half / fastbp_loss_divisor turn into l_i) and writes delta = scale * dL/dz of the last
 * layer (through its activation for the squared-error losses; the logit losses need identity there).
 * Used by the mini-batch path of _core.pyx (one call per row) and by the per-example loop below. */
static inline double FN(fastbp_output_delta_row)(const REAL *out, const REAL *y, Py_ssize_t K, int loss,
                                                 int act, REAL scale, REAL *delta, double total)
{
    Py_ssize_t k;
    if (loss == FASTBP_CROSS_ENTROPY) {
        /* -sum_k y_k log softmax(z)_k = logsumexp(z) sum_k y_k - sum_k y_k z_k; grad softmax sum y - y */
        double m = out[0], s = 0.0, target_sum = 0.0, dot_yz = 0.0;
        for (k = 1; k < K; k++)
            if (out[k] > m)
                m = out[k];
        for (k = 0; k < K; k++) {
            REAL ek = EXP((REAL)(out[k] - m));
            delta[k] = ek;
            s += ek;
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

/* Train on rows start .. start+count-1 of the epoch's order (order == NULL: rows in storage order),
 * one SGD step per row. Returns 0, or 1 when a loss is not finite (the step of that row is not taken).
 * *loss_sum and *done accumulate over the rows trained. */
static inline __attribute__((always_inline))
int FN(fastbp_train_rows_body)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                               const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                               REAL *activations, REAL *delta_a, REAL *delta_b,
                               double *loss_sum, Py_ssize_t *done)
{
    const int L = p->n_layers;
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
            const int act = p->acts[l];
            Py_ssize_t j = 0;
            if (n_in >= 8) {
                for (; j + 4 <= n_out; j += 4) {
                    DOT4(W + j * n_in, n_in, a_prev, a + j);
                    for (int q = 0; q < 4; q++)
                        a[j + q] = FN(fastbp_activate)(b[j + q] + a[j + q], act);
                }
            }
            for (; j < n_out; j++)
                a[j] = FN(fastbp_activate)(b[j] + DOT(W + j * n_in, a_prev, n_in), act);
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

#define FASTBP_SMALL_CASE(a, b, c)                                                                     \
    case ((a) - 1) * 16 + ((b) - 1) * 4 + ((c) - 1):                                                  \
        return FN(fastbp_train_rows_small)(p, params, X, Y, order, start, count, lr, loss_sum, done,    \
                                           a, b, c);
#define FASTBP_SMALL_CASES_C(a, b) \
    FASTBP_SMALL_CASE(a, b, 1) FASTBP_SMALL_CASE(a, b, 2) FASTBP_SMALL_CASE(a, b, 3) FASTBP_SMALL_CASE(a, b, 4)
#define FASTBP_SMALL_CASES_B(a) \
    FASTBP_SMALL_CASES_C(a, 1) FASTBP_SMALL_CASES_C(a, 2) FASTBP_SMALL_CASES_C(a, 3) FASTBP_SMALL_CASES_C(a, 4)

FASTBP_CLONES_SCALAR
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

FASTBP_CLONES
static int FN(fastbp_train_rows_any)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                     const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                     REAL *activations, REAL *delta_a, REAL *delta_b,
                                     double *loss_sum, Py_ssize_t *done)
{
    return FN(fastbp_train_rows_body)(p, params, X, Y, order, start, count, lr, activations, delta_a,
                                      delta_b, loss_sum, done);
}

static int FN(fastbp_train_rows)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                 const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                 REAL *activations, REAL *delta_a, REAL *delta_b,
                                 double *loss_sum, Py_ssize_t *done)
{
    if (p->n_layers == 2 && p->sizes[0] <= 4 && p->sizes[1] <= 4 && p->sizes[2] <= 4
            && (p->loss == FASTBP_HALF_SSE || p->loss == FASTBP_MSE))
        return FN(fastbp_train_rows_tiny)(p, params, X, Y, order, start, count, lr, loss_sum, done);
    return FN(fastbp_train_rows_any)(p, params, X, Y, order, start, count, lr, activations, delta_a,
                                     delta_b, loss_sum, done);
}
