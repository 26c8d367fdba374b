/* hist.h - latency histograms with fixed buckets: one writer, lock-free readers, merged by
 * adding, read as Prometheus buckets or as quantile estimates. */
#ifndef SLUICE_HIST_H
#define SLUICE_HIST_H

#include <stddef.h>
#include <stdint.h>

/* Upper bounds of the buckets, in microseconds (the last bucket, +Inf, is implicit). */
#define HIST_BUCKETS 14
extern const uint64_t hist_bounds_us[HIST_BUCKETS];

/*
 * Counts per bucket (bucket i holds observations <= hist_bounds_us[i] and
 * above the bound before it; counts[HIST_BUCKETS] those above the last), and
 * their sum. Zeroed memory is an empty histogram. One thread adds (relaxed
 * atomics); any thread may read or merge it at the same time and sees each
 * counter whole.
 */
struct hist {
    uint64_t counts[HIST_BUCKETS + 1];
    uint64_t sum_us;
};

/* Records one observation of us microseconds. */
void hist_add(struct hist *h, uint64_t us);

/* Adds src's counts into dst (dst read by one thread only while it merges). */
void hist_merge(struct hist *dst, const struct hist *src);

/* The number of observations. */
uint64_t hist_count(const struct hist *h);

/*
 * An estimate of quantile q (0..1) in microseconds: linear within the bucket
 * it falls in; for the last (unbounded) bucket, its lower bound. 0 when empty.
 */
uint64_t hist_quantile(const struct hist *h, double q);

#endif
