/* Tests for the core pieces: error table, allocator hook, clocks and timers. */
#include <xsync/xsync.h>

#include "harness.h"

TEST(error_codes_match_errno)
{
    EXPECT_EQ(XS_EINVAL, -EINVAL);
    EXPECT_EQ(XS_ENOMEM, -ENOMEM);
    EXPECT_EQ(XS_ECANCELED, -ECANCELED);
    EXPECT_EQ(XS_EDEADLINE, -ETIMEDOUT);
    EXPECT_EQ(XS_EBUSY, -EBUSY);
    EXPECT_LT(XS_ELIMIT, 0);
}

TEST(error_table_names_every_code)
{
    int codes[] = {XS_OK, XS_EINVAL, XS_ENOMEM, XS_ECANCELED, XS_EDEADLINE, XS_EBUSY,
                   XS_EAGAIN, XS_ENOENT, XS_EEXIST, XS_EOVERFLOW, XS_EMFILE, XS_ECLOSED,
                   XS_ELIMIT};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        EXPECT(strncmp(xs_err_name(codes[i]), "XS_", 3) == 0);
        EXPECT(strcmp(xs_err_name(codes[i]), "XS_UNKNOWN") != 0);
        EXPECT(strcmp(xs_strerror(codes[i]), "unknown error") != 0);
        for (size_t j = 0; j < i; j++)
            EXPECT(codes[i] != codes[j]);
    }
    EXPECT_STREQ(xs_err_name(XS_EDEADLINE), "XS_EDEADLINE");
    EXPECT_STREQ(xs_strerror(XS_EDEADLINE), "context deadline exceeded");
    EXPECT_STREQ(xs_strerror(XS_ECANCELED), "context canceled");
    EXPECT_STREQ(xs_strerror(42), "user error");
    EXPECT_STREQ(xs_strerror(-99999), "unknown error");
    EXPECT_STREQ(xs_err_name(42), "XS_UNKNOWN");
}

TEST(allocator_default_is_settable)
{
    const xs_allocator *libc = xs_allocator_libc();
    EXPECT_PTR_EQ(xs_allocator_default(), libc);
    xs_alloc_counter c;
    xs_alloc_counter_init(&c, NULL);
    EXPECT_PTR_EQ(xs_allocator_set_default(&c.allocator), libc);
    EXPECT_PTR_EQ(xs_allocator_default(), &c.allocator);
    EXPECT_PTR_EQ(xs_allocator_set_default(NULL), &c.allocator);
    EXPECT_PTR_EQ(xs_allocator_default(), libc);
}

TEST(counting_allocator_counts_and_fails_kth)
{
    xs_alloc_counter c;
    xs_alloc_counter_init(&c, NULL);
    const xs_allocator *a = &c.allocator;
    void *p = a->alloc(a->state, 100);
    ASSERT(p != NULL);
    EXPECT_EQ(atomic_load(&c.allocs), 1);
    EXPECT_EQ(atomic_load(&c.bytes), 100);
    EXPECT_EQ(atomic_load(&c.live_bytes), 100);
    a->free(a->state, p, 100);
    EXPECT_EQ(atomic_load(&c.live_bytes), 0);
    EXPECT_EQ(atomic_load(&c.frees), 1);

    xs_alloc_counter_fail_at(&c, 3, 0); /* only the third fails */
    void *q[5];
    for (int i = 0; i < 5; i++)
        q[i] = a->alloc(a->state, 8);
    EXPECT(q[0] && q[1] && !q[2] && q[3] && q[4]);
    EXPECT_EQ(atomic_load(&c.failures), 1);
    for (int i = 0; i < 5; i++)
        if (q[i])
            a->free(a->state, q[i], 8);

    xs_alloc_counter_fail_at(&c, 2, 1); /* the second and every later one */
    q[0] = a->alloc(a->state, 8);
    EXPECT(q[0] != NULL);
    EXPECT(a->alloc(a->state, 8) == NULL);
    EXPECT(a->alloc(a->state, 8) == NULL);
    a->free(a->state, q[0], 8);
    xs_alloc_counter_fail_at(&c, 0, 0); /* disarmed */
    q[0] = a->alloc(a->state, 8);
    EXPECT(q[0] != NULL);
    a->free(a->state, q[0], 8);
    EXPECT_EQ(atomic_load(&c.live_bytes), 0);
}

TEST(monotonic_clock_moves_forward)
{
    int64_t a = xs_now(), b = xs_now();
    EXPECT_GT(a, 0);
    EXPECT_LE(a, b);
    EXPECT_GE(xs_clock_now(NULL), b);
    EXPECT_GE(xs_clock_now(xs_clock_system()), b);
    EXPECT_EQ(xs_clock_free(xs_clock_system()), 0); /* a no-op */
    EXPECT_EQ(xs_clock_free(NULL), 0);
}

TEST(manual_clock_is_driven_by_hand)
{
    xs_clock *c;
    EXPECT_EQ(xs_clock_manual_new(5, NULL, NULL), XS_EINVAL);
    ASSERT_EQ(xs_clock_manual_new(5, NULL, &c), 0);
    EXPECT_EQ(xs_clock_now(c), 5);
    EXPECT_EQ(xs_clock_advance(c, 10), 0);
    EXPECT_EQ(xs_clock_now(c), 15);
    EXPECT_EQ(xs_clock_advance(c, -1), XS_EINVAL);
    EXPECT_EQ(xs_clock_now(c), 15);
    EXPECT_EQ(xs_clock_advance(c, INT64_MAX), 0); /* saturates */
    EXPECT_EQ(xs_clock_now(c), INT64_MAX);
    EXPECT_EQ(xs_clock_advance(NULL, 1), XS_EINVAL);
    EXPECT_EQ(xs_clock_free(c), 0);
}
