// PELT: Linux's per-entity load tracking (kernel/sched/pelt.c), in double precision and
// with a configurable period, for accelerators.
//
// Time is cut into periods of `period_s` seconds, each worth 1024 units (Linux: 1024 us).
// A signal's sum decays by y per period, y^32 = 1/2, so a period's contribution halves
// every 32 periods. Accumulation over a time delta that crosses period boundaries follows
// Linux's three segments exactly (accumulate_sum / __accumulate_pelt_segments):
//   d1  the rest of the period that was open, decayed by y^p,
//   d2  the p - 1 full periods in between, sum 1024 * (y + y^2 + ... + y^(p-1)),
//   d3  the part of the now-open period, undecayed,
// where p is the number of boundaries crossed; the old sum decays by y^p. While the
// entity runs, each unit of time adds `scale` (0..1024): the frequency- and capacity-
// invariant factor 1024 * (cur_clock / max_clock) * (capacity_orig / 1024). Like Linux,
//   util_avg = util_sum / (LOAD_AVG_MAX - 1024 + period_contrib),
// with LOAD_AVG_MAX = 1024 / (1 - y) (Linux truncates it to 47742 in integers), so an
// entity that always runs at scale s has util_avg = s exactly, and one that runs for
// exactly 32 whole periods from idle reaches s / 2 at the period boundary.
#pragma once

#include <cmath>

namespace capsched {

struct PeltParams {
    double period_s;     // seconds per period (> 0)
    double y;            // decay per period, 0.5^(1/32)
    double max_sum;      // LOAD_AVG_MAX = 1024 / (1 - y)
    double units_per_s;  // 1024 / period_s: a time delta times this is in period units
                         // (a multiplication where each update divided; the reference
                         // model rounds the same way)

    explicit PeltParams(double period = 1.0 / 32.0) noexcept
        : period_s(period),
          y(std::pow(0.5, 1.0 / 32.0)),
          max_sum(1024.0 / (1.0 - std::pow(0.5, 1.0 / 32.0))),
          units_per_s(1024.0 / period) {}
};

class PeltSignal {
  public:
    // Advances the signal to `now`, counting the time since the last update as running
    // at `scale` (0 = idle). The first call only sets the start time.
    void update(double now, double scale, const PeltParams& p) noexcept {
        if (!started_) {
            started_ = true;
            last_ = now;
            return;
        }
        if (!(now > last_)) return;
        const double delta = (now - last_) * p.units_per_s;
        last_ = now;
        const double total = period_contrib_ + delta;
        const double periods = std::floor(total / 1024.0);
        double contrib;
        if (periods > 0.0) {
            const double decay = std::pow(p.y, periods);
            util_sum_ *= decay;
            const double d1 = 1024.0 - period_contrib_;
            const double d3 = total - periods * 1024.0;
            // 1024 * sum_{n=1}^{p-1} y^n = LOAD_AVG_MAX * (1 - y^p) - 1024
            const double d2 = p.max_sum * (1.0 - decay) - 1024.0;
            contrib = d1 * decay + d2 + d3;
            period_contrib_ = d3;
        } else {
            contrib = delta;
            period_contrib_ = total;
        }
        util_sum_ += contrib * scale;
        util_avg_ = util_sum_ / (p.max_sum - 1024.0 + period_contrib_);
    }

    double util_avg() const noexcept { return util_avg_; }
    double util_sum() const noexcept { return util_sum_; }
    double period_contrib() const noexcept { return period_contrib_; }
    double last_update() const noexcept { return last_; }
    bool started() const noexcept { return started_; }
    // Checkpoint restore: the state as saved.
    void restore(bool started, double last, double sum, double contrib, double avg) noexcept {
        started_ = started;
        last_ = last;
        util_sum_ = sum;
        period_contrib_ = contrib;
        util_avg_ = avg;
    }

  private:
    bool started_ = false;
    double last_ = 0.0;
    double util_sum_ = 0.0;
    double period_contrib_ = 0.0;
    double util_avg_ = 0.0;
};

// util_est (Linux UTIL_EST_WEIGHT_SHIFT = 2): an EWMA with weight 1/4 of the samples,
// and the estimate used is max(ewma, last sample), so a class that just grew is not
// underestimated while the average catches up.
class UtilEst {
  public:
    void sample(double v) noexcept {
        ewma_ = seen_ ? ewma_ + (v - ewma_) / 4.0 : v;
        last_ = v;
        seen_ = true;
    }
    bool seen() const noexcept { return seen_; }
    double estimate() const noexcept { return ewma_ > last_ ? ewma_ : last_; }
    double ewma() const noexcept { return ewma_; }
    double last() const noexcept { return last_; }
    void restore(bool seen, double ewma, double last) noexcept {
        seen_ = seen;
        ewma_ = ewma;
        last_ = last;
    }

  private:
    bool seen_ = false;
    double ewma_ = 0.0;
    double last_ = 0.0;
};

}  // namespace capsched
