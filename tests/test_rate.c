/*
 * Tests for the rate module: the limiter, mirroring Go's x/time/rate tests
 * scenario by scenario (with time injected through the _at variants, so they
 * are exact), and xs_sometimes.
 */
#include <math.h>

#include <xsync/rate.h>
#include <xsync/xsync.h>

#include "harness.h"

/* Go's test times: t0 and steps of d = 100 ms. */
#define D (100 * XS_MSEC)
#define T0 (INT64_C(1000) * XS_SEC)
#define T(i) (T0 + (int64_t)(i) * D)

static bool check_dbl(const char *file, int line, const char *ea, const char *eb, double a,
                      double b, double tol)
{
    bool ok = a - b <= tol && b - a <= tol; /* no libm */
    if (!ok) {
        char what[512], detail[256];
        snprintf(what, sizeof what, "expected %s == %s", ea, eb);
        snprintf(detail, sizeof detail, "left: %.17g, right: %.17g", a, b);
        th_fail(file, line, what, detail);
    }
    return ok;
}
/* Exact: the arithmetic is Go's, so the values are the ones derived by hand. */
#define EXPECT_DBL(a, b) check_dbl(__FILE__, __LINE__, #a, #b, (a), (b), 0.0)
#define EXPECT_NEAR(a, b, tol) check_dbl(__FILE__, __LINE__, #a, #b, (a), (b), (tol))

static xs_rate *new_lim(double limit, int64_t burst)
{
    xs_rate *lim = NULL;
    int rc = xs_rate_new(limit, burst, NULL, &lim);
    EXPECT_EQ(rc, 0);
    return lim;
}

/* Reserves n tokens at t and checks the grant and its time to act. */
static xs_rate_reservation reserve_at(xs_rate *lim, int64_t t, int64_t n, int64_t act, int line)
{
    xs_rate_reservation r;
    int rc = xs_rate_reserve_n_at(lim, t, n, &r);
    if (rc != 0 || !r.ok || r.time_to_act != act) {
        char detail[256];
        snprintf(detail, sizeof detail, "rc %d ok %d act t0%+.3fd, want act t0%+.3fd", rc, r.ok,
                 (double)(r.time_to_act - T0) / D, (double)(act - T0) / D);
        th_fail(__FILE__, line, "reservation", detail);
    }
    return r;
}
#define RESERVE(lim, t, n, act) reserve_at((lim), (t), (n), (act), __LINE__)

typedef struct step {
    int64_t t;
    int64_t n;
    bool ok;
    double tokens; /* xs_rate_tokens_at(t) before the call */
} step;

static void run_steps(xs_rate *lim, const step *s, int count)
{
    for (int i = 0; i < count; i++) {
        double tok = xs_rate_tokens_at(lim, s[i].t);
        bool ok = xs_rate_allow_n_at(lim, s[i].t, s[i].n);
        if (tok != s[i].tokens || ok != s[i].ok) {
            char detail[256];
            snprintf(detail, sizeof detail,
                     "step %d: allow_n(t%+.1f, %lld) = %d with %.17g tokens, want %d with %.17g",
                     i, (double)(s[i].t - T0) / D, (long long)s[i].n, ok, tok, s[i].ok,
                     s[i].tokens);
            th_fail(__FILE__, __LINE__, "allow step", detail);
        }
    }
}

/* ---- allow ---- */

TEST(burst1_at_10_per_second)
{
    xs_rate *lim = new_lim(10, 1);
    ASSERT(lim);
    static const step s[] = {
        {T(0), 1, true, 1},  {T(0), 1, false, 0}, {T(0), 1, false, 0},
        {T(1), 1, true, 1},  {T(1), 1, false, 0}, {T(1), 1, false, 0},
        {T(2), 2, false, 1}, /* burst is 1: n = 2 never passes */
        {T(2), 1, true, 1},  {T(2), 1, false, 0},
        {T(9), 2, false, 1}, /* not even after a long rest */
    };
    run_steps(lim, s, (int)(sizeof s / sizeof s[0]));
    xs_rate_free(lim);
}

/*
 * 10/s, burst 3, full at t0.  Each 100 ms step refills one token, capped at
 * 3; a call takes n if the bucket holds n (n <= 3), else changes nothing.
 *   t0: 3 -2-> 1; 2 > 1 no; -1-> 0; no          t1: 1, n = 4 > burst no
 *   t2: 2 -1-> 1    t3: 2 -1-> 1    t4: 2 -1-> 1 -1-> 0; no; no
 *   t9: 0 + 5 capped at 3 -3-> 0; n = 0 passes with 0 tokens
 */
TEST(burst3_table_t0_to_t9)
{
    xs_rate *lim = new_lim(10, 3);
    ASSERT(lim);
    static const step s[] = {
        {T(0), 2, true, 3},  {T(0), 2, false, 1}, {T(0), 1, true, 1},  {T(0), 1, false, 0},
        {T(1), 4, false, 1}, {T(2), 1, true, 2},  {T(3), 1, true, 2},  {T(4), 1, true, 2},
        {T(4), 1, true, 1},  {T(4), 1, false, 0}, {T(4), 1, false, 0}, {T(9), 3, true, 3},
        {T(9), 0, true, 0},
    };
    run_steps(lim, s, (int)(sizeof s / sizeof s[0]));
    for (int k = 1; k <= 5; k++) /* it refills one per step again, up to 3 */
        EXPECT_DBL(xs_rate_tokens_at(lim, T(9 + k)), (double)(k < 3 ? k : 3));
    xs_rate_free(lim);
}

/* golang.org/issues/34861: a rate like 10/13 must not lose the first token. */
TEST(no_truncation_errors_first_allow)
{
    xs_rate *lim = new_lim(0.7692307692307693, 1);
    ASSERT(lim);
    EXPECT(xs_rate_allow(lim));
    xs_rate_free(lim);
}

/* golang.org/issues/46579: after a long rest the bucket is exactly full. */
TEST(long_rest_fills_bucket_exactly)
{
    xs_rate *lim = new_lim(1.0 / 3600, 1);
    ASSERT(lim);
    EXPECT(xs_rate_allow_at(lim, T(0)));
    /* 0.5499... tokens later, then a very long rest */
    int64_t t1 = T(0) + (int64_t)(0.54990492004805558 * 3600 * XS_SEC);
    EXPECT(xs_rate_tokens_at(lim, t1) > 0.5499 && xs_rate_tokens_at(lim, t1) < 0.55);
    EXPECT(!xs_rate_allow_at(lim, t1));
    EXPECT_DBL(xs_rate_tokens_at(lim, INT64_MAX), 1.0);
    EXPECT(xs_rate_allow_at(lim, INT64_MAX));
    xs_rate_free(lim);
}

/* ---- reserve ---- */

TEST(reserve_timeline)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    xs_rate_reservation r = RESERVE(lim, T(0), 2, T(0));
    EXPECT_EQ(xs_rate_reservation_delay_from(&r, T(0)), 0);
    r = RESERVE(lim, T(0), 2, T(2));
    EXPECT_EQ(xs_rate_reservation_delay_from(&r, T(0)), 2 * D);
    EXPECT_EQ(xs_rate_reservation_delay_from(&r, T(1)), D);
    EXPECT_EQ(xs_rate_reservation_delay_from(&r, T(5)), 0);
    EXPECT(xs_rate_reservation_ok(&r));
    EXPECT_EQ(r.tokens, 2);
    EXPECT_DBL(r.limit, 10.0);
    RESERVE(lim, T(3), 2, T(4));
    xs_rate_free(lim);
}

TEST(reserve_mixed_with_allow)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    xs_rate_reservation r;
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(0), 3, &r), XS_ELIMIT); /* n > burst */
    EXPECT(!r.ok);
    EXPECT_EQ(xs_rate_reservation_delay_from(&r, T(0)), XS_FOREVER);
    RESERVE(lim, T(0), 2, T(0));
    EXPECT(!xs_rate_allow_n_at(lim, T(1), 2)); /* not enough tokens */
    RESERVE(lim, T(1), 2, T(2));
    EXPECT(!xs_rate_allow_n_at(lim, T(1), 1)); /* negative tokens */
    EXPECT(xs_rate_allow_n_at(lim, T(3), 1));
    xs_rate_free(lim);
}

TEST(reserve_after_set_limit)
{
    xs_rate *lim = new_lim(5, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    RESERVE(lim, T(0), 2, T(4));
    EXPECT_EQ(xs_rate_set_limit_at(lim, T(2), 10), 0);
    EXPECT_DBL(xs_rate_limit(lim), 10.0);
    RESERVE(lim, T(2), 1, T(4)); /* -1 at t2, then 2 short at 10/s */
    xs_rate_free(lim);
}

TEST(reserve_after_set_burst)
{
    xs_rate *lim = new_lim(5, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    RESERVE(lim, T(0), 2, T(4));
    EXPECT_EQ(xs_rate_set_burst_at(lim, T(3), 4), 0);
    EXPECT_EQ(xs_rate_burst(lim), 4);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(3)), -0.5);
    RESERVE(lim, T(3), 4, T(12)); /* 4.5 short at 5/s: 900 ms */
    xs_rate_free(lim);
}

TEST(smaller_burst_caps_the_bucket)
{
    xs_rate *lim = new_lim(10, 5);
    ASSERT(lim);
    EXPECT_EQ(xs_rate_set_burst_at(lim, T(0), 2), 0);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 2.0);
    EXPECT(xs_rate_allow_n_at(lim, T(0), 2));
    EXPECT(!xs_rate_allow_at(lim, T(0)));
    EXPECT_EQ(xs_rate_set_burst_at(lim, T(0), 4), 0); /* adds no tokens by itself */
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 0.0);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(9)), 4.0);
    xs_rate_free(lim);
}

/* ---- cancel ---- */

TEST(cancel_last_reservation_gives_tokens_back)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    xs_rate_reservation r = RESERVE(lim, T(0), 2, T(2));
    xs_rate_reservation_cancel_at(&r, T(1)); /* 2 tokens back: -1 + 2 = 1 at t1 */
    EXPECT_EQ(r.tokens, 0);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(1)), 1.0);
    RESERVE(lim, T(1), 2, T(2));
    xs_rate_free(lim);
}

TEST(cancel_after_time_to_act_gives_nothing)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    xs_rate_reservation r = RESERVE(lim, T(0), 2, T(2));
    xs_rate_reservation_cancel_at(&r, T(3)); /* too late */
    EXPECT_DBL(xs_rate_tokens_at(lim, T(3)), 1.0);
    RESERVE(lim, T(3), 2, T(4));
    xs_rate_free(lim);
}

TEST(cancel_zero_token_reservation_changes_nothing)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    xs_rate_reservation z = RESERVE(lim, T(0), 0, T(0));
    RESERVE(lim, T(0), 1, T(1));
    xs_rate_reservation_cancel_at(&z, T(0));
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), -1.0);
    RESERVE(lim, T(0), 1, T(2));
    xs_rate_free(lim);
}

/* A reservation whose place was taken by later ones gives back nothing. */
TEST(cancel_gives_back_zero_when_later_reservations_follow)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    xs_rate_reservation r = RESERVE(lim, T(0), 1, T(1));
    RESERVE(lim, T(0), 1, T(2));
    xs_rate_reservation_cancel_at(&r, T(0)); /* 1 - (t2 - t1) * 10 = 0 back */
    RESERVE(lim, T(0), 1, T(3));
    xs_rate_free(lim);
}

TEST(cancel_gives_back_one_token)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    xs_rate_reservation r = RESERVE(lim, T(0), 2, T(2));
    RESERVE(lim, T(0), 1, T(3));
    xs_rate_reservation_cancel_at(&r, T(2)); /* 2 - 1 reserved after it */
    RESERVE(lim, T(2), 2, T(4));
    xs_rate_free(lim);
}

TEST(cancel_multi)
{
    xs_rate *lim = new_lim(10, 4);
    ASSERT(lim);
    RESERVE(lim, T(0), 4, T(0));
    xs_rate_reservation a = RESERVE(lim, T(0), 3, T(3));
    RESERVE(lim, T(0), 1, T(4));
    xs_rate_reservation c = RESERVE(lim, T(0), 1, T(5));
    xs_rate_reservation_cancel_at(&c, T(1)); /* 1 back */
    xs_rate_reservation_cancel_at(&a, T(1)); /* 2 back, as if c never was */
    RESERVE(lim, T(1), 3, T(5));
    xs_rate_free(lim);
}

TEST(cancel_failed_reservation_changes_nothing)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    xs_rate_reservation r;
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(0), 3, &r), XS_ELIMIT);
    xs_rate_reservation_cancel_at(&r, T(0));
    RESERVE(lim, T(0), 2, T(2)); /* no extra tokens */
    xs_rate_free(lim);
}

TEST(cancel_after_set_limit_uses_reservation_limit)
{
    xs_rate *lim = new_lim(5, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    xs_rate_reservation r = RESERVE(lim, T(0), 2, T(4));
    EXPECT_EQ(xs_rate_set_limit_at(lim, T(2), 10), 0);
    xs_rate_reservation_cancel_at(&r, T(2)); /* 2 tokens back */
    RESERVE(lim, T(2), 2, T(3));
    xs_rate_free(lim);
}

TEST(cancel_twice_gives_back_once)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    RESERVE(lim, T(0), 2, T(0));
    xs_rate_reservation r = RESERVE(lim, T(0), 1, T(1));
    xs_rate_reservation_cancel_at(&r, T(0));
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 0.0);
    xs_rate_reservation_cancel_at(&r, T(0));
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 0.0);
    xs_rate_free(lim);
}

/* ---- time going backwards ---- */

TEST(time_backwards_adds_no_tokens_and_loses_none)
{
    xs_rate *lim = new_lim(10, 3);
    ASSERT(lim);
    static const step s[] = {
        {T(1), 1, true, 3},  /* start at t1 */
        {T(0), 1, true, 2},  /* back to t0: handled at t1, two tokens left */
        {T(0), 1, true, 1},  {T(0), 1, false, 0}, {T(0), 1, false, 0},
        {T(1), 1, false, 0}, /* t0..t1 is not credited twice */
        {T(2), 1, true, 1},  /* the token of t1..t2 */
        {T(2), 1, false, 0},
    };
    run_steps(lim, s, (int)(sizeof s / sizeof s[0]));
    /* looking back shows the latest state; looking ahead still refills */
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 0.0);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(4)), 2.0);
    xs_rate_free(lim);
}

TEST(reserve_backwards_is_handled_at_the_latest_time)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    RESERVE(lim, T(1), 2, T(1));
    xs_rate_reservation r = RESERVE(lim, T(0), 1, T(2)); /* handled at t1 */
    EXPECT_EQ(xs_rate_reservation_delay_from(&r, T(0)), 2 * D);
    RESERVE(lim, T(2), 2, T(4));
    /* cancelling "at t0" is cancelling at the limiter's latest time */
    xs_rate_reservation c = RESERVE(lim, T(2), 1, T(5));
    xs_rate_reservation_cancel_at(&c, T(0));
    EXPECT_DBL(xs_rate_tokens_at(lim, T(2)), -2.0);
    xs_rate_free(lim);
}

/* ---- limit 0 and infinity ---- */

TEST(limit_zero_allows_exactly_burst_then_set_limit_reopens)
{
    xs_rate *lim = new_lim(0, 3);
    ASSERT(lim);
    int passed = 0;
    for (int i = 0; i < 100; i++)
        passed += xs_rate_allow_at(lim, T(i));
    EXPECT_EQ(passed, 3);
    EXPECT_DBL(xs_rate_tokens_at(lim, INT64_MAX), 0.0);
    xs_rate_reservation r;
    EXPECT_EQ(xs_rate_reserve_at(lim, T(100), &r), XS_ELIMIT); /* it would never come */
    EXPECT(!r.ok);
    EXPECT_EQ(xs_rate_wait_n_at(lim, xs_ctx_background(), T(100), 1), XS_ELIMIT);
    EXPECT_EQ(xs_rate_set_limit_at(lim, T(100), 10), 0);
    EXPECT(!xs_rate_allow_at(lim, T(100)));
    EXPECT(xs_rate_allow_at(lim, T(101)));
    EXPECT(xs_rate_allow_n_at(lim, T(104), 3));
    xs_rate_free(lim);
}

/* Go's TestZeroLimit, and burst 1 reopened by a limit. */
TEST(limit_zero_burst_one)
{
    xs_rate *lim = new_lim(0, 1);
    ASSERT(lim);
    EXPECT(xs_rate_allow(lim));
    EXPECT(!xs_rate_allow(lim));
    EXPECT_EQ(xs_rate_set_limit(lim, 1e9), 0); /* a token per ns */
    int64_t t = xs_now() + XS_MSEC;
    EXPECT(xs_rate_allow_at(lim, t));
    xs_rate_free(lim);
}

TEST(limit_inf_allows_everything)
{
    xs_rate *lim = new_lim(XS_RATE_INF, 0);
    ASSERT(lim);
    for (int i = 0; i < 10; i++)
        EXPECT(xs_rate_allow_n_at(lim, T(0), 1000000));
    EXPECT(xs_rate_allow(lim));
    xs_rate_reservation r;
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(0), XS_RATE_MAX_N, &r), 0);
    EXPECT(r.ok);
    EXPECT_EQ(xs_rate_reservation_delay_from(&r, T(0)), 0);
    EXPECT_EQ(xs_rate_wait_n(lim, xs_ctx_background(), 3), 0); /* burst ignored */
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 0.0);
    /* its reservations took nothing, so cancelling gives nothing back */
    EXPECT_EQ(xs_rate_set_limit_at(lim, T(0), 10), 0);
    xs_rate_reservation_cancel_at(&r, T(0));
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 0.0);
    xs_rate_free(lim);

    ASSERT_EQ(xs_rate_new(HUGE_VAL, 1, NULL, &lim), 0);
    EXPECT_DBL(xs_rate_limit(lim), XS_RATE_INF);
    EXPECT(xs_rate_allow_n(lim, 5));
    xs_rate_free(lim);
}

TEST(every_converts_intervals)
{
    /* close enough, as Go's TestEvery: 1 / seconds rounds twice */
    static const struct {
        int64_t interval;
        double limit;
    } c[] = {
        {1, 1e9}, {XS_USEC, 1e6}, {XS_MSEC, 1e3}, {10 * XS_MSEC, 100}, {D, 10},
        {XS_SEC, 1}, {2 * XS_SEC, 0.5}, {2500 * XS_MSEC, 0.4}, {4 * XS_SEC, 0.25},
        {10 * XS_SEC, 0.1}, {INT64_MAX, 1e9 / (double)INT64_MAX},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        EXPECT_NEAR(xs_rate_every(c[i].interval) / c[i].limit, 1.0, 1e-9);
    EXPECT_DBL(xs_rate_every(0), XS_RATE_INF);
    EXPECT_DBL(xs_rate_every(-1), XS_RATE_INF);
}

/* ---- failed calls and bad input ---- */

TEST(failed_allow_or_reserve_changes_no_state)
{
    xs_rate *lim = new_lim(10, 2);
    ASSERT(lim);
    EXPECT(xs_rate_allow_n_at(lim, T(0), 2));
    /* failures stamped later than t0 must not move the limiter's clock */
    EXPECT(!xs_rate_allow_n_at(lim, T(1) + D / 2, 2)); /* 1.5 tokens */
    EXPECT(!xs_rate_allow_n_at(lim, T(5), 3));         /* n > burst */
    xs_rate_reservation r;
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(5), 3, &r), XS_ELIMIT);
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(5), -1, &r), XS_EINVAL);
    EXPECT_EQ(xs_rate_wait_n_at(lim, xs_ctx_background(), T(5), 3), XS_ELIMIT);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(1)), 1.0);
    RESERVE(lim, T(0), 2, T(2)); /* the timeline is the untouched one */
    xs_rate_free(lim);
}

TEST(bad_input_is_an_error_and_changes_nothing)
{
    xs_rate *lim = NULL;
    EXPECT_EQ(xs_rate_new(10, 1, NULL, NULL), XS_EINVAL);
    EXPECT_EQ(xs_rate_new(-1, 1, NULL, &lim), XS_EINVAL);
    EXPECT_EQ(xs_rate_new(NAN, 1, NULL, &lim), XS_EINVAL);
    EXPECT_EQ(xs_rate_new(10, -1, NULL, &lim), XS_EINVAL);
    EXPECT_EQ(xs_rate_new(10, XS_RATE_MAX_N + 1, NULL, &lim), XS_EINVAL);
    EXPECT(lim == NULL);

    /* NULL limiter */
    xs_rate_reservation r;
    EXPECT(!xs_rate_allow(NULL));
    EXPECT(!xs_rate_allow_n_at(NULL, T(0), 1));
    EXPECT_EQ(xs_rate_reserve(NULL, &r), XS_EINVAL);
    EXPECT(!r.ok);
    EXPECT_EQ(xs_rate_wait(NULL, xs_ctx_background()), XS_EINVAL);
    EXPECT_EQ(xs_rate_set_limit(NULL, 1), XS_EINVAL);
    EXPECT_EQ(xs_rate_set_burst(NULL, 1), XS_EINVAL);
    EXPECT_DBL(xs_rate_tokens(NULL), 0.0);
    EXPECT_DBL(xs_rate_limit(NULL), 0.0);
    EXPECT_EQ(xs_rate_burst(NULL), 0);
    EXPECT(!xs_rate_reservation_ok(NULL));
    EXPECT_EQ(xs_rate_reservation_delay(NULL), XS_FOREVER);
    xs_rate_reservation_cancel(NULL);
    xs_rate_free(NULL);

    lim = new_lim(10, 3);
    ASSERT(lim);
    EXPECT(xs_rate_allow_n_at(lim, T(0), 1));
    /* negative and oversize weights */
    EXPECT(!xs_rate_allow_n_at(lim, T(0), -1));
    EXPECT(!xs_rate_allow_n_at(lim, T(0), XS_RATE_MAX_N + 1));
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(0), -1, &r), XS_EINVAL);
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(0), 1, NULL), XS_EINVAL);
    EXPECT_EQ(xs_rate_wait_n(lim, xs_ctx_background(), -1), XS_EINVAL);
    EXPECT_EQ(xs_rate_wait_n(lim, NULL, 1), XS_EINVAL);
    /* n > burst for reserve and wait: Go's "exceeds limiter's burst" */
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(0), 4, &r), XS_ELIMIT);
    EXPECT(!r.ok);
    EXPECT_EQ(xs_rate_wait_n(lim, xs_ctx_background(), 4), XS_ELIMIT);
    /* bad limits and bursts */
    EXPECT_EQ(xs_rate_set_limit_at(lim, T(0), -0.5), XS_EINVAL);
    EXPECT_EQ(xs_rate_set_limit_at(lim, T(0), NAN), XS_EINVAL);
    EXPECT_EQ(xs_rate_set_burst_at(lim, T(0), -1), XS_EINVAL);
    EXPECT_EQ(xs_rate_set_burst_at(lim, T(0), XS_RATE_MAX_N + 1), XS_EINVAL);
    /* none of it changed anything, not even the limiter's clock */
    EXPECT_DBL(xs_rate_limit(lim), 10.0);
    EXPECT_EQ(xs_rate_burst(lim), 3);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 2.0);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(1)), 3.0);
    xs_rate_free(lim);
}

TEST(extreme_times_saturate)
{
    xs_rate *lim = new_lim(1e-9, 2); /* a token every 31.7 years */
    ASSERT(lim);
    EXPECT(xs_rate_allow_n_at(lim, INT64_MIN, 2));
    xs_rate_reservation r;
    EXPECT_EQ(xs_rate_reserve_n_at(lim, INT64_MIN, 2, &r), 0);
    EXPECT(r.ok);
    EXPECT(r.time_to_act > INT64_MIN);
    EXPECT(xs_rate_tokens_at(lim, INT64_MAX) == 2.0); /* 584 years later: full */
    EXPECT(xs_rate_allow_n_at(lim, INT64_MAX, 2));
    EXPECT_EQ(xs_rate_reserve_n_at(lim, INT64_MAX, 2, &r), 0);
    EXPECT_EQ(r.time_to_act, INT64_MAX); /* saturated */
    EXPECT_EQ(xs_rate_reservation_delay_from(&r, INT64_MIN), XS_FOREVER);
    xs_rate_free(lim);

    lim = new_lim(1e-300, 1); /* a wait too long for int64: saturates */
    ASSERT(lim);
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(0), 1, &r), 0);
    EXPECT_EQ(xs_rate_reserve_n_at(lim, T(0), 1, &r), 0);
    EXPECT_EQ(r.time_to_act, INT64_MAX);
    EXPECT(!xs_rate_allow_n_at(lim, T(0), 0));
    xs_rate_free(lim);
}

TEST(new_allocation_failure_leaks_nothing)
{
    xs_alloc_counter c;
    xs_alloc_counter_init(&c, NULL);
    xs_rate_options o = {.allocator = &c.allocator};
    xs_rate *lim = (xs_rate *)&c; /* must stay untouched */
    xs_alloc_counter_fail_at(&c, 1, 0);
    EXPECT_EQ(xs_rate_new(10, 1, &o, &lim), XS_ENOMEM);
    EXPECT_PTR_EQ(lim, &c);
    EXPECT_EQ(atomic_load(&c.failures), 1);
    EXPECT_EQ(atomic_load(&c.live_bytes), 0);
    ASSERT_EQ(xs_rate_new(10, 1, &o, &lim), 0);
    EXPECT_EQ(atomic_load(&c.allocs), 1);
    /* nothing on the allow, reserve or cancel paths allocates */
    xs_rate_reservation r;
    for (int i = 0; i < 100; i++) {
        xs_rate_allow(lim);
        xs_rate_reserve(lim, &r);
        xs_rate_reservation_cancel(&r);
    }
    EXPECT_EQ(atomic_load(&c.allocs), 1);
    xs_rate_free(lim);
    EXPECT_EQ(atomic_load(&c.live_bytes), 0);
    EXPECT_EQ(atomic_load(&c.frees), 1);
}

/* ---- wait ---- */

TEST(wait_simple)
{
    xs_rate *lim = new_lim(10, 3);
    ASSERT(lim);
    xs_ctx *done;
    ASSERT_EQ(xs_ctx_with_cancel(xs_ctx_background(), &done), 0);
    xs_ctx_cancel(done, 0);
    EXPECT_EQ(xs_rate_wait(lim, done), XS_ECANCELED); /* even with tokens free */
    EXPECT_EQ(xs_rate_wait_n(lim, xs_ctx_background(), 4), XS_ELIMIT);

    int64_t start = xs_now();
    EXPECT_EQ(xs_rate_wait_n(lim, xs_ctx_background(), 2), 0); /* act now: 1 left */
    EXPECT_LT(xs_now() - start, 100 * XS_MSEC);
    EXPECT_EQ(xs_rate_wait_n(lim, xs_ctx_background(), 3), 0); /* 2 short: 200 ms */
    EXPECT_GE(xs_now() - start, 2 * D);
    xs_ctx_release(done);
    xs_rate_free(lim);
}

TEST(wait_with_short_deadline_fails_at_once)
{
    xs_rate *lim = new_lim(1, 3);
    ASSERT(lim);
    xs_ctx *ctx;
    ASSERT_EQ(xs_ctx_with_timeout(xs_ctx_background(), XS_SEC, 0, &ctx), 0);
    EXPECT_EQ(xs_rate_wait_n(lim, ctx, 2), 0); /* act now: 1 left */
    int64_t probe = xs_now() + 10 * XS_SEC;
    double before = xs_rate_tokens_at(lim, probe);
    int64_t start = xs_now();
    EXPECT_EQ(xs_rate_wait_n(lim, ctx, 3), XS_EDEADLINE); /* needs 2 s, has 1 s */
    /* it returned before the deadline could pass, so it never waited ... */
    EXPECT_LT(xs_now() - start, XS_SEC);
    EXPECT(!xs_ctx_done(ctx));
    /* ... and took nothing */
    EXPECT_DBL(xs_rate_tokens_at(lim, probe), before);
    xs_ctx_release(ctx);
    xs_rate_free(lim);
}

/* The same on a manual clock, through wait_n_at: no real time involved. */
TEST(wait_deadline_on_manual_clock)
{
    xs_clock *clk;
    ASSERT_EQ(xs_clock_manual_new(T(0), NULL, &clk), 0);
    xs_ctx *cc, *ctx;
    ASSERT_EQ(xs_ctx_with_clock(xs_ctx_background(), clk, &cc), 0);
    ASSERT_EQ(xs_ctx_with_deadline(cc, T(1), 0, &ctx), 0);
    xs_rate *lim = new_lim(10, 3);
    ASSERT(lim);
    EXPECT_EQ(xs_rate_wait_n_at(lim, ctx, T(0), 2), 0);
    EXPECT_EQ(xs_rate_wait_n_at(lim, ctx, T(0), 3), XS_EDEADLINE); /* needs t2 */
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 1.0);
    EXPECT_EQ(xs_rate_wait_n_at(lim, ctx, T(0), 1), 0); /* fits: acts now */
    /* stamped before the limiter's time: it would act at t1, past t1 - 1 */
    xs_ctx *early;
    ASSERT_EQ(xs_ctx_with_deadline(cc, T(1) - 1, 0, &early), 0);
    EXPECT_EQ(xs_rate_wait_n_at(lim, early, T(0) - D, 1), XS_EDEADLINE);
    EXPECT_DBL(xs_rate_tokens_at(lim, T(0)), 0.0);
    xs_rate_free(lim);
    xs_ctx_release(early);
    xs_ctx_release(ctx);
    xs_ctx_release(cc);
    EXPECT_EQ(xs_clock_free(clk), 0);
}

typedef struct waiter {
    xs_rate *lim;
    xs_ctx *ctx;
    int64_t n;
    int rc;
    th_event done;
} waiter;

static void *wait_thread(void *arg)
{
    waiter *w = arg;
    w->rc = xs_rate_wait_n(w->lim, w->ctx, w->n);
    th_event_signal(&w->done);
    return NULL;
}

TEST(wait_cancelled_while_waiting_gives_reservation_back)
{
    xs_rate *lim = new_lim(0.1, 3); /* a token every 10 s */
    ASSERT(lim);
    waiter w = {.lim = lim, .n = 3};
    th_event_init(&w.done);
    ASSERT_EQ(xs_ctx_with_cancel(xs_ctx_background(), &w.ctx), 0);
    EXPECT_EQ(xs_rate_wait_n(lim, w.ctx, 2), 0); /* act now: 1 left */
    int64_t probe = xs_now() + 5 * XS_SEC;
    double before = xs_rate_tokens_at(lim, probe); /* 1.5 */

    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, wait_thread, &w), 0);
    /* the waiter has reserved (2 short: 20 s) once the bucket goes negative */
    int64_t bound = xs_now() + 10 * XS_SEC;
    while (xs_rate_tokens(lim) >= 0 && xs_now() < bound)
        sched_yield();
    EXPECT(xs_rate_tokens(lim) < 0);
    EXPECT_NEAR(xs_rate_tokens_at(lim, probe), before - 3, 1e-6);
    EXPECT_EQ(th_event_count(&w.done), 0);
    xs_ctx_cancel(w.ctx, 0);
    EXPECT(th_event_wait(&w.done, 1, 10000));
    pthread_join(th, NULL);
    EXPECT_EQ(w.rc, XS_ECANCELED);
    EXPECT_NEAR(xs_rate_tokens_at(lim, probe), before, 1e-6); /* all 3 back */
    xs_ctx_release(w.ctx);
    th_event_destroy(&w.done);
    xs_rate_free(lim);
}

TEST(wait_succeeds_within_deadline)
{
    xs_rate *lim = new_lim(20, 1);
    ASSERT(lim);
    xs_ctx *ctx;
    ASSERT_EQ(xs_ctx_with_timeout(xs_ctx_background(), 30 * XS_SEC, 0, &ctx), 0);
    int64_t start = xs_now();
    for (int i = 0; i < 3; i++)
        EXPECT_EQ(xs_rate_wait(lim, ctx), 0);
    EXPECT_GE(xs_now() - start, 2 * (XS_SEC / 20)); /* 2 waits of 50 ms */
    xs_ctx_release(ctx);
    xs_rate_free(lim);
}

/* ---- concurrency ---- */

typedef struct racer {
    xs_rate *lim;
    pthread_barrier_t *go;
    _Atomic int *ok;
} racer;

static void *allow_once(void *arg)
{
    racer *r = arg;
    pthread_barrier_wait(r->go);
    if (xs_rate_allow(r->lim))
        atomic_fetch_add(r->ok, 1);
    return NULL;
}

TEST(fifteen_threads_on_burst_five)
{
    enum { N = 15 };
    xs_rate *lim = new_lim(1e-3, 5);
    ASSERT(lim);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, N);
    _Atomic int ok = 0;
    racer r = {lim, &go, &ok};
    pthread_t th[N];
    for (int i = 0; i < N; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, allow_once, &r), 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    EXPECT_EQ(atomic_load(&ok), 5);
    pthread_barrier_destroy(&go);
    xs_rate_free(lim);
}

typedef struct fixed {
    xs_rate *lim;
    pthread_barrier_t go;
    _Atomic int64_t ok;
} fixed;

static void *fixed_thread(void *arg)
{
    fixed *f = arg;
    int64_t mine = 0;
    pthread_barrier_wait(&f->go);
    for (int i = 0; i < 200000; i++) {
        int64_t w = 1 + i % 2;
        mine += xs_rate_allow_n_at(f->lim, T(0), w) ? w : 0;
    }
    atomic_fetch_add(&f->ok, mine);
    return NULL;
}

/* At one instant nothing refills: racing threads get exactly the burst. */
TEST(racing_allows_at_one_instant_take_exactly_the_burst)
{
    enum { N = 4, BURST = 399999 };
    xs_rate *lim = new_lim(1, BURST);
    ASSERT(lim);
    static fixed f;
    f.lim = lim;
    atomic_store(&f.ok, 0);
    pthread_barrier_init(&f.go, NULL, N);
    pthread_t th[N];
    for (int i = 0; i < N; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, fixed_thread, &f), 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&f.go);
    /* weights 1 and 2: every token granted once, at most one left over */
    double left = xs_rate_tokens_at(lim, T(0));
    int64_t granted = atomic_load(&f.ok);
    EXPECT(left == 0.0 || left == 1.0);
    EXPECT_EQ(granted + (int64_t)left, BURST);
    EXPECT(!xs_rate_allow_n_at(lim, T(0), 2));
    xs_rate_free(lim);
}

typedef struct qps {
    xs_rate *lim;
    pthread_barrier_t go;
    int64_t start, stop;     /* written before the barrier */
    _Atomic int64_t ok;
    _Atomic int64_t latest;  /* the latest call time of any thread */
    _Atomic int64_t stalled; /* ns in stretches with no call at all */
} qps;

/* Calls closer than this are back to back; a longer stretch without any
 * call is the harness stalling (threads preempted on a busy machine). */
#define STALL (50 * XS_USEC)

static void *qps_thread(void *arg)
{
    qps *q = arg;
    int64_t mine = 0, stalled = 0;
    pthread_barrier_wait(&q->go);
    for (int64_t t; (t = xs_now()) < q->stop;) {
        mine += xs_rate_allow_at(q->lim, t);
        int64_t prev = atomic_load_explicit(&q->latest, memory_order_relaxed);
        while (prev < t && !atomic_compare_exchange_weak_explicit(
                               &q->latest, &prev, t, memory_order_relaxed, memory_order_relaxed))
            ;
        if (prev < t && t - prev > STALL)
            stalled += t - prev;
    }
    atomic_fetch_add(&q->ok, mine);
    atomic_fetch_add(&q->stalled, stalled);
    return NULL;
}

/*
 * Go's TestLongRunningQPS: 2 s of real time at 100/s with burst 1 and more
 * threads than cores calling allow back to back.  Never more than burst +
 * rate * t + 1 events.  At least 0.99 of the ideal, where the ideal leaves
 * out the stretches in which no thread called at all: with burst 1 the
 * bucket overflows in any such stall, which is the harness's loss (at most
 * rate * stall each), not the limiter's.
 */
TEST_T(two_seconds_of_real_time_simultaneous, 60)
{
    enum { N = 4 };
    xs_rate *lim = new_lim(100, 1);
    ASSERT(lim);
    static qps q;
    q.lim = lim;
    atomic_store(&q.ok, 0);
    atomic_store(&q.stalled, 0);
    pthread_barrier_init(&q.go, NULL, N + 1);
    pthread_t th[N];
    for (int i = 0; i < N; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, qps_thread, &q), 0);
    /* no event can come before `start`: every thread waits for us */
    q.start = xs_now();
    q.stop = q.start + 2 * XS_SEC;
    atomic_store(&q.latest, q.start);
    pthread_barrier_wait(&q.go);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&q.go);
    double elapsed = (double)(xs_now() - q.start) / XS_SEC;
    double ideal = 1 + 100 * elapsed;
    double reachable = ideal - 100 * (double)atomic_load(&q.stalled) / XS_SEC;
    int64_t ok = atomic_load(&q.ok);
    EXPECT_LE(ok, (int64_t)(ideal + 1));
    EXPECT_GE(ok, (int64_t)(0.99 * reachable));
    xs_rate_free(lim);
}

typedef struct mixer {
    xs_rate *lim;
    int seed;
} mixer;

static void *mix_thread(void *arg)
{
    mixer *m = arg;
    uint64_t x = (uint64_t)m->seed * 0x9E3779B97F4A7C15u + 1;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        xs_rate_reservation r;
        switch (x % 8) {
        case 0: case 1: case 2:
            xs_rate_allow_n(m->lim, (int64_t)(x >> 8) % 4);
            break;
        case 3: case 4:
            if (xs_rate_reserve_n(m->lim, (int64_t)(x >> 8) % 3, &r) == 0 && (x >> 12) & 1)
                xs_rate_reservation_cancel(&r);
            break;
        case 5:
            xs_rate_set_limit(m->lim, (double)((x >> 8) % 1000000));
            break;
        case 6:
            xs_rate_set_burst(m->lim, (int64_t)((x >> 8) % 8));
            break;
        default:
            if (xs_rate_tokens(m->lim) > (double)XS_RATE_MAX_N)
                th_fail(__FILE__, __LINE__, "tokens above any burst", "");
            break;
        }
    }
    return NULL;
}

/* Every operation at once from several threads (for the sanitizers). */
TEST(concurrent_mixed_operations)
{
    enum { N = 4 };
    xs_rate *lim = new_lim(1000, 4);
    ASSERT(lim);
    mixer m[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        m[i] = (mixer){lim, i + 1};
        ASSERT_EQ(pthread_create(&th[i], NULL, mix_thread, &m[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    EXPECT_EQ(xs_rate_set_burst(lim, 4), 0);
    EXPECT(xs_rate_tokens(lim) <= 4.0);
    xs_rate_free(lim);
}

/* ---- xs_sometimes ---- */

/* Runs `calls` allow_at calls at times[i] (or all at T0) and checks which ran. */
static void check_sometimes(int64_t first, int64_t every, int64_t interval, const int64_t *times,
                            const char *want, int line)
{
    xs_sometimes s = {.first = first, .every = every, .interval = interval};
    int calls = (int)strlen(want);
    char got[64] = {0};
    for (int i = 0; i < calls; i++)
        got[i] = xs_sometimes_allow_at(&s, times ? times[i] : T0) ? 'x' : '.';
    if (strcmp(got, want) != 0) {
        char detail[256];
        snprintf(detail, sizeof detail, "ran \"%s\", want \"%s\"", got, want);
        th_fail(__FILE__, line, "sometimes", detail);
    }
}
/* CHECK_SOMETIMES(first, every, interval, times or NULL, "x.x" for run / not run) */
#define CHECK_SOMETIMES(first, every, interval, times, want)                   \
    check_sometimes((first), (every), (interval), (times), (want), __LINE__)

TEST(sometimes_combinations)
{
    /* the first call always runs; then any filter that allows wins */
    CHECK_SOMETIMES(0, 0, 0, NULL, "x.........");
    CHECK_SOMETIMES(3, 0, 0, NULL, "xxx.......");
    CHECK_SOMETIMES(0, 3, 0, NULL, "x..x..x..x");
    CHECK_SOMETIMES(0, 1, 0, NULL, "xxxxxxxxxx");
    CHECK_SOMETIMES(2, 3, 0, NULL, "xx.x..x..x");
    CHECK_SOMETIMES(5, 4, 0, NULL, "xxxxx...x.");
    CHECK_SOMETIMES(-3, -2, -1, NULL,
                    "x.........");
    CHECK_SOMETIMES(0, 0, D, NULL, "x.........");

    /* interval: runs once D has passed since the last run */
    static const int64_t ts[] = {T(0), T(0) + D / 2, T(1), T(1) + 1, T(2) - 1,
                                 T(2), T(5), T(5) + 1, T(6) + D / 2, T(7)};
    CHECK_SOMETIMES(0, 0, D, ts, "x.x..xx.x.");
    /* any run, whichever filter allowed it, restarts the interval */
    CHECK_SOMETIMES(2, 0, D, ts, "xx..x.x.x.");
    CHECK_SOMETIMES(0, 4, D, ts, "x.x.x.x.x.");
    CHECK_SOMETIMES(0, 3, 3 * D, ts, "x..x..x..x");
    /* time going backwards never makes the interval pass */
    static const int64_t back[] = {T(5), T(0), T(4), T(6), T(1)};
    CHECK_SOMETIMES(0, 0, D, back, "x..x.");
}

static void bump(void *arg)
{
    ++*(int *)arg;
}

TEST(sometimes_do_runs_fn_when_allowed)
{
    xs_sometimes s = {.first = 2, .every = 3};
    int runs = 0;
    char got[11] = {0};
    for (int i = 0; i < 10; i++)
        got[i] = xs_sometimes_do(&s, bump, &runs) ? 'x' : '.';
    EXPECT_STREQ(got, "xx.x..x..x");
    EXPECT_EQ(runs, 5);
    EXPECT(!xs_sometimes_do(NULL, bump, &runs));
    EXPECT(!xs_sometimes_do(&s, NULL, NULL));
    EXPECT(!xs_sometimes_allow(NULL));
    EXPECT_EQ(s.count_, 10); /* the bad calls counted nothing */

    xs_sometimes once = {0};
    EXPECT(xs_sometimes_allow(&once));
    EXPECT(!xs_sometimes_allow(&once));
}

typedef struct serial {
    xs_sometimes s;
    _Atomic int inside;
    int runs; /* written only under the sometimes lock */
    _Atomic int overlaps;
} serial;

static void serial_fn(void *arg)
{
    serial *p = arg;
    if (atomic_fetch_add(&p->inside, 1) != 0)
        atomic_fetch_add(&p->overlaps, 1);
    p->runs++;
    atomic_fetch_sub(&p->inside, 1);
}

static void *serial_thread(void *arg)
{
    serial *p = arg;
    for (int i = 0; i < 5000; i++)
        xs_sometimes_do(&p->s, serial_fn, p);
    return NULL;
}

TEST(sometimes_do_runs_serially)
{
    enum { N = 4 };
    serial p = {.s = {.every = 2}};
    pthread_t th[N];
    for (int i = 0; i < N; i++)
        ASSERT_EQ(pthread_create(&th[i], NULL, serial_thread, &p), 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    EXPECT_EQ(atomic_load(&p.overlaps), 0);
    EXPECT_EQ(p.runs, N * 5000 / 2);
}

TEST(negative_zero_limit_is_zero)
{
    xs_rate *lim;
    ASSERT_EQ(xs_rate_new(-0.0, 1, NULL, &lim), 0);
    EXPECT(!signbit(xs_rate_limit(lim)));
    EXPECT_EQ(xs_rate_set_limit(lim, -0.0), 0);
    EXPECT(!signbit(xs_rate_limit(lim)));
    xs_rate_free(lim);
}
