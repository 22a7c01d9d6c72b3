/*
 * singleflight_internal.h — what other modules may ask of a singleflight
 * group beyond its public API.
 */
#ifndef XSYNC_SINGLEFLIGHT_INTERNAL_H
#define XSYNC_SINGLEFLIGHT_INTERNAL_H

#include <stdbool.h>

#include <xsync/singleflight.h>

/* Whether xs_sf_free would return XS_EBUSY right now (a call someone still
 * waits for, or completion callbacks being delivered by this thread). */
bool xs__sf_busy(xs_sf *sf);

#endif
