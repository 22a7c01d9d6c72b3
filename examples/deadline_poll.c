/*
 * deadline_poll.c — a request with a deadline, waited on in one poll() call
 * together with a socket, the way an event loop would.
 *
 * The request context ends after 50 ms (or earlier, if the "client" hangs
 * up).  Its fd joins the poll set beside the socket: whichever is readable
 * first wins, and the cause says why the request ended.
 */
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include <xsync/xsync.h>

enum { CLIENT_GONE = 1 }; /* our own cause: a positive code */

int main(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return 1;

    xs_ctx *request;
    int r = xs_ctx_with_timeout(xs_ctx_background(), 50 * XS_MSEC, 0, &request);
    if (r != 0) {
        fprintf(stderr, "with_timeout: %s\n", xs_strerror(r));
        return 1;
    }

    struct pollfd fds[2] = {
        {.fd = sv[0], .events = POLLIN},              /* the peer's reply (never comes) */
        {.fd = xs_ctx_fd(request), .events = POLLIN}, /* the request's end */
    };
    poll(fds, 2, -1);
    if (fds[0].revents & POLLIN)
        xs_ctx_cancel(request, CLIENT_GONE);

    printf("request ended: err=%s cause=%s\n", xs_err_name(xs_ctx_err(request)),
           xs_ctx_cause(request) == CLIENT_GONE ? "client gone" : xs_strerror(xs_ctx_cause(request)));

    xs_ctx_release(request);
    close(sv[0]);
    close(sv[1]);
    return 0;
}
