/* Per-example SGD (mini-batches of one row, plain SGD): forward, loss, backward and update fused, for
 * one precision. Included twice by _kernels.h with REAL, FN, EXP, TANH and DOT defined.
 *
 * The same arithmetic as the general path of _core.pyx (dense_forward, output_delta, dense_backward
 * with update_in_place), written as one loop so that small networks pay no call overhead per example:
 * each weight row is read once in the backward sweep, which both propagates the delta to the layer
 * below (with the old weight) and applies the update.
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

/* Train on rows start .. start+count-1 of the epoch's order (order == NULL: rows in storage order),
 * one SGD step per row. Returns 0, or 1 when a loss is not finite (the step of that row is not taken).
 * *loss_sum and *done accumulate over the rows trained.
 *
 * `fixed_layers` = 0: sizes and offsets come from the plan. `fixed_layers` = 2 with sizes f0-f1-f2:
 * the caller passes compile-time constants, so that for tiny networks the compiler unrolls every loop
 * (their trip counts of 1 to 4 otherwise cost more in loop overhead than the arithmetic). */
static inline __attribute__((always_inline))
int FN(fastbp_train_rows_body)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                               const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                               REAL *activations, REAL *delta_a, REAL *delta_b,
                               double *loss_sum, Py_ssize_t *done,
                               const int fixed_layers, const Py_ssize_t f0, const Py_ssize_t f1,
                               const Py_ssize_t f2)
{
#define SIZE(l) (fixed_layers ? ((l) == 0 ? f0 : (l) == 1 ? f1 : f2) : p->sizes[l])
#define W_OFF(l) (fixed_layers ? ((l) == 0 ? 0 : f0 * f1 + f1) : p->w_off[l])
#define B_OFF(l) (fixed_layers ? ((l) == 0 ? f0 * f1 : f0 * f1 + f1 + f1 * f2) : p->b_off[l])
#define ACT_OFF(l) (fixed_layers ? ((l) == 0 ? 0 : f1) : p->act_off[l])
    const int L = fixed_layers ? fixed_layers : p->n_layers;
    const Py_ssize_t n_in0 = SIZE(0);
    const Py_ssize_t K = SIZE(L);
    const int out_act = p->acts[L - 1];
    const REAL scale = p->loss == FASTBP_MSE ? (REAL)(2.0 / (double)K) : (REAL)1;
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
            const Py_ssize_t n_in = SIZE(l), n_out = SIZE(l + 1);
            const REAL *W = params + W_OFF(l);
            const REAL *b = params + B_OFF(l);
            REAL *a = activations + ACT_OFF(l);
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
        const REAL *out = activations + ACT_OFF(L - 1);
        REAL *delta = delta_a;
        double loss = 0.0;
        if (p->loss == FASTBP_CROSS_ENTROPY) {
            double m = out[0], s = 0.0, target_sum = 0.0, dot_yz = 0.0;
            for (Py_ssize_t k = 1; k < K; k++)
                if (out[k] > m)
                    m = out[k];
            for (Py_ssize_t k = 0; k < K; k++) {
                REAL ek = EXP((REAL)(out[k] - m));
                delta[k] = ek;
                s += ek;
                target_sum += y[k];
                dot_yz += y[k] * (out[k] - m);
            }
            loss = log(s) * target_sum - dot_yz;
            for (Py_ssize_t k = 0; k < K; k++)
                delta[k] = (REAL)(delta[k] / s) * (REAL)target_sum - y[k];
        } else {
            for (Py_ssize_t k = 0; k < K; k++) {
                const double diff = (double)out[k] - (double)y[k];
                loss += diff * diff;
                delta[k] = scale * (out[k] - y[k]);
            }
            loss = p->loss == FASTBP_MSE ? loss / (double)K : 0.5 * loss;
            FN(fastbp_times_derivative)(delta, out, K, out_act);
        }
        if (!isfinite(loss)) {
            status = 1;
            break;
        }

        /* backward: propagate with the old weights and update them in the same sweep */
        REAL *d_prev = delta_b;
        for (int l = L - 1; l >= 0; l--) {
            const Py_ssize_t n_in = SIZE(l), n_out = SIZE(l + 1);
            REAL *W = params + W_OFF(l);
            REAL *b = params + B_OFF(l);
            const REAL *FASTBP_RESTRICT in = l > 0 ? activations + ACT_OFF(l - 1) : x;
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
#undef SIZE
#undef W_OFF
#undef B_OFF
#undef ACT_OFF

/* Networks with one hidden layer and at most 4 units per layer get their own unrolled copy. */
#define FASTBP_FIXED_CASE(a, b, c)                                                                     \
    case ((a) - 1) * 16 + ((b) - 1) * 4 + ((c) - 1):                                                  \
        return FN(fastbp_train_rows_body)(p, params, X, Y, order, start, count, lr, activations,       \
                                          delta_a, delta_b, loss_sum, done, 2, a, b, c);
#define FASTBP_FIXED_CASES_C(a, b) \
    FASTBP_FIXED_CASE(a, b, 1) FASTBP_FIXED_CASE(a, b, 2) FASTBP_FIXED_CASE(a, b, 3) FASTBP_FIXED_CASE(a, b, 4)
#define FASTBP_FIXED_CASES_B(a) \
    FASTBP_FIXED_CASES_C(a, 1) FASTBP_FIXED_CASES_C(a, 2) FASTBP_FIXED_CASES_C(a, 3) FASTBP_FIXED_CASES_C(a, 4)

static int FN(fastbp_train_rows_tiny)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                      const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                      REAL *activations, REAL *delta_a, REAL *delta_b,
                                      double *loss_sum, Py_ssize_t *done)
{
    switch ((p->sizes[0] - 1) * 16 + (p->sizes[1] - 1) * 4 + (p->sizes[2] - 1)) {
        FASTBP_FIXED_CASES_B(1) FASTBP_FIXED_CASES_B(2) FASTBP_FIXED_CASES_B(3) FASTBP_FIXED_CASES_B(4)
    default:
        return -1;
    }
}
#undef FASTBP_FIXED_CASE
#undef FASTBP_FIXED_CASES_C
#undef FASTBP_FIXED_CASES_B

FASTBP_CLONES
static int FN(fastbp_train_rows_any)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                     const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                     REAL *activations, REAL *delta_a, REAL *delta_b,
                                     double *loss_sum, Py_ssize_t *done)
{
    return FN(fastbp_train_rows_body)(p, params, X, Y, order, start, count, lr, activations, delta_a,
                                      delta_b, loss_sum, done, 0, 0, 0, 0);
}

static int FN(fastbp_train_rows)(const fastbp_plan *p, REAL *params, const REAL *X, const REAL *Y,
                                 const Py_ssize_t *order, Py_ssize_t start, Py_ssize_t count, REAL lr,
                                 REAL *activations, REAL *delta_a, REAL *delta_b,
                                 double *loss_sum, Py_ssize_t *done)
{
    if (p->n_layers == 2 && p->sizes[0] <= 4 && p->sizes[1] <= 4 && p->sizes[2] <= 4)
        return FN(fastbp_train_rows_tiny)(p, params, X, Y, order, start, count, lr, activations, delta_a,
                                          delta_b, loss_sum, done);
    return FN(fastbp_train_rows_any)(p, params, X, Y, order, start, count, lr, activations, delta_a,
                                     delta_b, loss_sum, done);
}
