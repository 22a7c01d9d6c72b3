/* xsync/export.h — symbol visibility.  Only functions marked XS_API are
 * exported from the shared library; everything else is hidden. */
#ifndef XSYNC_EXPORT_H
#define XSYNC_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define XS_API __attribute__((visibility("default")))
#else
#define XS_API
#endif

#endif
