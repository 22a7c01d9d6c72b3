/* The single table mapping each code to its name and message. */
#include <xsync/error.h>

#include <stddef.h>

#define XS_ERRORS(X)                                                        \
    X(XS_OK, "success")                                                     \
    X(XS_EINVAL, "invalid argument")                                        \
    X(XS_ENOMEM, "out of memory")                                           \
    X(XS_ECANCELED, "context canceled")                                     \
    X(XS_EDEADLINE, "context deadline exceeded")                            \
    X(XS_EBUSY, "resource busy")                                            \
    X(XS_EAGAIN, "would block")                                             \
    X(XS_ENOENT, "no such entry")                                           \
    X(XS_EEXIST, "entry exists")                                            \
    X(XS_EOVERFLOW, "value too large")                                      \
    X(XS_EMFILE, "too many open files")                                     \
    X(XS_ECLOSED, "object is closed")                                       \
    X(XS_ELIMIT, "limit exceeded")

static const struct {
    int code;
    const char *name;
    const char *msg;
} table[] = {
#define XS_ROW(c, m) {c, #c, m},
    XS_ERRORS(XS_ROW)
#undef XS_ROW
};

static size_t find(int code)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].code == code)
            return i;
    return (size_t)-1;
}

const char *xs_strerror(int code)
{
    size_t i = find(code);
    if (i != (size_t)-1)
        return table[i].msg;
    return code > 0 ? "user error" : "unknown error";
}

const char *xs_err_name(int code)
{
    size_t i = find(code);
    return i != (size_t)-1 ? table[i].name : "XS_UNKNOWN";
}
