/* hist.c - latency histograms with fixed buckets: one writer, lock-free readers, merged by
 * adding, read as Prometheus buckets or as quantile estimates. */
#include "hist.h"

const uint64_t hist_bounds_us[HIST_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
};

void
hist_add(struct hist *h, uint64_t us)
{
    size_t i = 0;
    while (i < HIST_BUCKETS && us > hist_bounds_us[i])
        i++;
    /* One writer: relaxed loads and stores, no locked instruction; readers see each whole. */
    __atomic_store_n(&h->counts[i], __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED) + 1,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&h->sum_us, __atomic_load_n(&h->sum_us, __ATOMIC_RELAXED) + us,
                     __ATOMIC_RELAXED);
}

void
hist_merge(struct hist *dst, const struct hist *src)
{
    for (size_t i = 0; i <= HIST_BUCKETS; i++)
        dst->counts[i] += __atomic_load_n(&src->counts[i], __ATOMIC_RELAXED);
    dst->sum_us += __atomic_load_n(&src->sum_us, __ATOMIC_RELAXED);
}

uint64_t
hist_count(const struct hist *h)
{
    uint64_t n = 0;
    for (size_t i = 0; i <= HIST_BUCKETS; i++)
        n += __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED);
    return n;
}

uint64_t
hist_quantile(const struct hist *h, double q)
{
    uint64_t counts[HIST_BUCKETS + 1], total = 0;
    for (size_t i = 0; i <= HIST_BUCKETS; i++)
        total += counts[i] = __atomic_load_n(&h->counts[i], __ATOMIC_RELAXED);
    if (total == 0)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    double rank = q * (double)total;
    uint64_t seen = 0;
    for (size_t i = 0; i <= HIST_BUCKETS; i++) {
        if (counts[i] && (double)(seen + counts[i]) >= rank) {
            uint64_t lo = i ? hist_bounds_us[i - 1] : 0;
            if (i == HIST_BUCKETS)
                return lo;
            double frac = (rank - (double)seen) / (double)counts[i];
            return lo + (uint64_t)(frac * (double)(hist_bounds_us[i] - lo));
        }
        seen += counts[i];
    }
    return hist_bounds_us[HIST_BUCKETS - 1];
}
