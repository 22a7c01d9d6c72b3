/*
 * xsync/error.h — the library's error codes and their single table.
 *
 * Functions that can fail return int: 0 on success, a negative XS_E* code on
 * failure.  Codes equal -errno where an errno with the same meaning exists, so
 * they mix with system errors.  Errors returned by user callbacks pass through
 * every layer unchanged: use positive codes for your own errors so they never
 * collide with the library's.
 */
#ifndef XSYNC_ERROR_H
#define XSYNC_ERROR_H

#include <errno.h>

#include <xsync/export.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XS_OK        0
#define XS_EINVAL    (-EINVAL)     /* invalid argument; nothing was changed */
#define XS_ENOMEM    (-ENOMEM)     /* allocation failed; nothing was changed */
#define XS_ECANCELED (-ECANCELED)  /* context canceled */
#define XS_EDEADLINE (-ETIMEDOUT)  /* context deadline exceeded */
#define XS_EBUSY     (-EBUSY)      /* operation not allowed while busy */
#define XS_EAGAIN    (-EAGAIN)     /* not possible now without blocking */
#define XS_ENOENT    (-ENOENT)     /* no such key or entry */
#define XS_EEXIST    (-EEXIST)     /* key or entry already present */
#define XS_EOVERFLOW (-EOVERFLOW)  /* a count or weight would overflow */
#define XS_EMFILE    (-EMFILE)     /* out of file descriptors */
#define XS_ECLOSED   (-ESHUTDOWN)  /* the object is closed */
#define XS_ELIMIT    (-4001)       /* request exceeds a configured limit */

/*
 * A static, human-readable message for any code: the library's codes, 0,
 * other negative errno values, and positive (user) codes.  Never NULL;
 * thread-safe.
 */
XS_API const char *xs_strerror(int code);

/* The code's symbolic name ("XS_EINVAL"), or "XS_UNKNOWN" for codes outside
 * the table (including positive user codes).  Never NULL; thread-safe. */
XS_API const char *xs_err_name(int code);

#ifdef __cplusplus
}
#endif
#endif
