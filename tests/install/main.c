/* A consumer of the installed xsync: cancels a context and reads its fd. */
#include <poll.h>
#include <stdio.h>
#include <xsync/xsync.h>

int main(void)
{
    xs_ctx *ctx;
    if (xs_ctx_with_cancel(xs_ctx_background(), &ctx) != 0)
        return 1;
    xs_ctx_cancel(ctx, 0);
    struct pollfd p = {.fd = xs_ctx_fd(ctx), .events = POLLIN};
    int ok = xs_ctx_err(ctx) == XS_ECANCELED && poll(&p, 1, 1000) == 1;
    printf("consumer: %s (%s)\n", ok ? "ok" : "FAILED", xs_strerror(xs_ctx_err(ctx)));
    xs_ctx_release(ctx);
    return ok ? 0 : 1;
}
