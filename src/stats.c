/*
 * stats.c — the stat source vtable's checked entry points.
 */
#include <stddef.h>

#include <xsync/stats.h>

int xs_stat_counter_get(xs_stat_source *src, const char *name, xs_stat_counter **out)
{
    if (!src || !src->ops || !src->ops->counter || !name || !out)
        return XS_EINVAL;
    return src->ops->counter(src, name, out);
}

int xs_stat_timer_get(xs_stat_source *src, const char *name, xs_stat_timer **out)
{
    if (!src || !src->ops || !src->ops->timer || !name || !out)
        return XS_EINVAL;
    return src->ops->timer(src, name, out);
}

void xs_stat_source_free(xs_stat_source *src)
{
    if (src && src->ops && src->ops->free)
        src->ops->free(src);
}
