/* xsync/xsync.h — everything. */
#ifndef XSYNC_XSYNC_H
#define XSYNC_XSYNC_H

#include <xsync/alloc.h>
#include <xsync/context.h>
#include <xsync/error.h>
#include <xsync/executor.h>
#include <xsync/group.h>
#include <xsync/map.h>
#include <xsync/pool.h>
#include <xsync/rate.h>
#include <xsync/semaphore.h>
#include <xsync/singleflight.h>
#include <xsync/stats.h>
#include <xsync/time.h>

#endif
