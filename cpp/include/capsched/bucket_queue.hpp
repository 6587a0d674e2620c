// Indexed priority queue of handles for large queues: a small d-ary heap in front, the
// rest in unsorted buckets by key range.
//
// The scheduler's ready queues hold up to millions of requests but give up only their
// smallest few at each step. In one d-ary heap, each pop sifts an entry through every
// level, and past a few 1e4 entries its lower levels miss the cache at each pop. Here
// only the `front` (the smallest entries: up to kFrontMax) is a heap, small enough to
// stay in cache; the rest lie in buckets, each holding the keys from its lower bound up
// to the next bucket's, unsorted. A pop takes the front's top; when the front runs empty
// the lowest bucket is heapified into it (O(bucket), amortised O(1) a pop). A push goes
// to the front when its key is below the lowest bucket's bound, else it is appended to
// its bucket (a binary search over the bounds, in cache). A bucket that fills is split
// at its median; a front that grows past kFrontMax gives its largest entries to a new
// lowest bucket.
//
// Order: the same as IndexedHeap's: top() is the entry with the smallest key under
// Key's operator<, which must be a total order (ReadyKey breaks ties by id).
// Invariants (check_invariants):
//   * the front is a heap under <; every entry of bucket k (in bound order) is >= its
//     bound, and <= every entry of the buckets above it; every front entry is <= every
//     bucket entry; the queue is empty when its front is;
//   * pos_[h] is kFront | i for a handle at index i of the front, its bucket id and slot
//     for one in a bucket, and kNpos for handles not held. (Leaving the front's entries
//     unindexed saves the index writes of its sifts, but then an erase or re-key of one
//     scans the front, and the deadline-level changes of urgent requests, which sit in
//     the front, made that the dearer: tried and dropped.)
// Complexity: top, contains O(1); pop, and erase or update of a front entry,
// O(log kFrontMax) plus an amortised O(1); erase and update of a bucket entry O(1);
// push O(log buckets) (O(kFrontMax) when it splits the front, O(kBucketMax) when it
// splits a bucket, each amortised O(1)); update = erase + push.
// Allocation: a bucket's storage is kept when it empties and reused, so once a queue
// has reached its largest size it allocates only when a split needs a bucket more.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "capsched/heap.hpp"

namespace capsched {

template <class Key, unsigned D = 4, std::size_t FrontMax = 1024, unsigned BucketBits = 9>
class BucketQueue {
    static_assert(D >= 2, "a d-ary heap needs D >= 2");
    static_assert(BucketBits >= 1 && BucketBits <= 16, "buckets of 2 .. 65536 entries");

  public:
    struct Entry {
        Key key;
        Handle handle;
    };
    static constexpr std::uint32_t kNpos = 0xFFFFFFFFu;
    static constexpr std::size_t kFrontMax = FrontMax;  // front entries before it gives some to a bucket
    static constexpr std::size_t kBucketBits = BucketBits;
    static constexpr std::size_t kBucketMax = std::size_t{1} << kBucketBits;  // entries per bucket
    // (a refill puts a whole bucket in the front, within its reserved room)
    static_assert(kFrontMax + 1 >= kBucketMax && kFrontMax > kBucketMax / 2, "front too small for a bucket");

    BucketQueue() { front_.reserve(kFrontMax + 1); }

    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return front_.empty(); }
    // Handles below this need no index growth.
    std::size_t capacity() const noexcept { return pos_.size(); }

    // Room for `n` entries with handles below `n`: the index, and buckets for them at
    // three quarters full (a split leaves two halves, which then fill).
    void reserve(std::size_t n) {
        if (pos_.size() < n) pos_.resize(n, kNpos);
        const std::size_t want = (4 * n) / (3 * kBucketMax) + 2;
        buckets_.reserve(want);
        free_buckets_.reserve(want);
        buckets_order_.reserve(want);
        lows_.reserve(want);
        while (buckets_.size() < want) new_bucket();
    }

    bool contains(Handle h) const noexcept { return h < pos_.size() && pos_[h] != kNpos; }

    const Entry& top() const noexcept {
        CAPSCHED_ASSERT(!empty());
        return front_[0];
    }

    // The front heap (heap order): the top and then its children first; for prefetching.
    const Entry* front_begin() const noexcept { return front_.data(); }
    std::size_t front_size() const noexcept { return front_.size(); }

    const Key& key_of(Handle h) const noexcept {
        CAPSCHED_ASSERT(contains(h));
        const std::uint32_t p = pos_[h];
        if (p & kFront) return front_[p & ~kFront].key;
        return buckets_[p >> kBucketBits][p & kSlotMask].key;
    }

    // Strong guarantee, as update().
    void push(Handle h, const Key& key) {
        CAPSCHED_ASSERT(!contains(h));
        if (h >= pos_.size()) pos_.resize(detail::index_size_for(h), kNpos);
        reserve_split();
        insert(Entry{key, h});
        ++size_;
    }

    Handle pop() noexcept {
        CAPSCHED_ASSERT(!empty());
        const Handle h = front_[0].handle;
        remove_front(0);
        --size_;
        return h;
    }

    // Change the key of a held handle. Strong guarantee: if it throws (out of memory),
    // nothing changed.
    void update(Handle h, const Key& key) {
        CAPSCHED_ASSERT(contains(h));
        const std::uint32_t p = pos_[h];
        if (p & kFront) {
            // Within the front when it stays below the lowest bound: a sift, as in a heap.
            if (buckets_order_.empty() || key < lows_.back()) {
                const std::uint32_t i = p & ~kFront;
                const bool up = key < front_[i].key;
                front_[i].key = key;
                if (up)
                    sift_up(i);
                else
                    sift_down(i);
                return;
            }
        }
        reserve_split();  // (before anything changes: the insert below cannot fail)
        erase_at(p, h);
        insert(Entry{key, h});
    }

    // Remove a handle if held; returns whether it was.
    bool erase(Handle h) noexcept {
        if (!contains(h)) return false;
        erase_at(pos_[h], h);
        --size_;
        return true;
    }

    void clear() noexcept {
        for_each([this](const Entry& e) { pos_[e.handle] = kNpos; });
        front_.clear();
        for (const std::uint32_t b : buckets_order_) release(b);
        buckets_order_.clear();
        lows_.clear();
        size_ = 0;
    }

    // Calls f(entry) for every entry, in no particular order.
    template <class F>
    void for_each(F f) const {
        for (const Entry& e : front_) f(e);
        for (const std::uint32_t b : buckets_order_)
            for (const Entry& e : buckets_[b]) f(e);
    }

    // Verifies the invariants above; O(n). For tests.
    bool check_invariants() const noexcept {
        std::size_t held = 0;
        for (std::size_t i = 0; i < front_.size(); ++i) {
            if (front_[i].handle >= pos_.size() || pos_[front_[i].handle] != (kFront | i)) return false;
            if (i > 0 && front_[i].key < front_[(i - 1) / D].key) return false;
            ++held;
        }
        if (front_.empty() && !buckets_order_.empty()) return false;
        if (buckets_order_.size() != lows_.size()) return false;
        // buckets_order_ runs from the highest bound to the lowest.
        for (std::size_t k = 0; k < buckets_order_.size(); ++k) {
            const std::uint32_t b = buckets_order_[k];
            const std::vector<Entry>& v = buckets_[b];
            if (v.size() > kBucketMax) return false;
            if (k + 1 < lows_.size() && lows_[k] < lows_[k + 1]) return false;
            for (std::size_t s = 0; s < v.size(); ++s) {
                const Entry& e = v[s];
                if (e.handle >= pos_.size() || pos_[e.handle] != code(b, s)) return false;
                if (e.key < lows_[k]) return false;                  // below its bound
                if (k > 0 && lows_[k - 1] < e.key) return false;     // above the next bucket's
                ++held;
            }
        }
        if (!lows_.empty())
            for (const Entry& e : front_)
                if (lows_.back() < e.key) return false;
        if (held != size_) return false;
        std::size_t indexed = 0;
        for (const std::uint32_t p : pos_) indexed += (p != kNpos);
        return indexed == held;
    }

  private:
    static constexpr std::uint32_t kFront = 0x80000000u;
    static constexpr std::uint32_t kSlotMask = static_cast<std::uint32_t>(kBucketMax - 1);

    static std::uint32_t code(std::uint32_t bucket, std::size_t slot) noexcept {
        return (bucket << kBucketBits) | static_cast<std::uint32_t>(slot);
    }

    // Adds an entry (size_ is the caller's). Does not allocate after reserve_split().
    void insert(const Entry& e) noexcept {
        if (buckets_order_.empty() || e.key < lows_.back()) {
            front_.push_back(e);
            sift_up(static_cast<std::uint32_t>(front_.size() - 1));
            if (front_.size() > kFrontMax) split_front();
            return;
        }
        // The bucket with the highest bound <= e.key: the first k with !(e.key <
        // lows_[k]), lows_ running from high to low (the last one qualifies). Branch-free
        // halving: the comparisons' outcomes are random, so branches would mispredict.
        std::size_t lo = 0;
        for (std::size_t n = lows_.size(); n > 1;) {
            const std::size_t half = n / 2;
            lo = below(e.key, lows_[lo + half - 1]) ? lo + half : lo;
            n -= half;
        }
        lo += below(e.key, lows_[lo]) ? 1 : 0;
        std::uint32_t b = buckets_order_[lo];
        if (buckets_[b].size() == kBucketMax) {
            split_bucket(lo);
            if (!(e.key < lows_[lo])) {
                b = buckets_order_[lo];  // the new, upper half
            } else {
                b = buckets_order_[lo + 1];
            }
        }
        std::vector<Entry>& v = buckets_[b];
        pos_[e.handle] = code(b, v.size());
        v.push_back(e);
    }

    // Moves the upper half of bucket k (in order) to a new bucket just above it.
    void split_bucket(std::size_t k) noexcept {
        const std::uint32_t b = buckets_order_[k];
        const std::uint32_t nb = acquire();
        std::vector<Entry>& v = buckets_[b];
        const std::size_t half = v.size() / 2;
        std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(half), v.end(), less_entry);
        std::vector<Entry>& w = buckets_[nb];
        w.assign(v.begin() + static_cast<std::ptrdiff_t>(half), v.end());
        v.resize(half);
        for (std::size_t s = 0; s < v.size(); ++s) pos_[v[s].handle] = code(b, s);
        for (std::size_t s = 0; s < w.size(); ++s) pos_[w[s].handle] = code(nb, s);
        buckets_order_.insert(buckets_order_.begin() + static_cast<std::ptrdiff_t>(k), nb);
        lows_.insert(lows_.begin() + static_cast<std::ptrdiff_t>(k), w.front().key);  // (nth_element: the smallest of w first)
    }

    // The front's largest kBucketMax / 2 entries become the new lowest bucket.
    void split_front() noexcept {
        const std::uint32_t nb = acquire();
        const std::size_t keep = front_.size() - kBucketMax / 2;
        std::nth_element(front_.begin(), front_.begin() + static_cast<std::ptrdiff_t>(keep), front_.end(), less_entry);
        std::vector<Entry>& w = buckets_[nb];
        w.assign(front_.begin() + static_cast<std::ptrdiff_t>(keep), front_.end());
        front_.resize(keep);
        for (std::size_t s = 0; s < w.size(); ++s) pos_[w[s].handle] = code(nb, s);
        buckets_order_.push_back(nb);
        lows_.push_back(w.front().key);
        heapify();
    }

    // The front ran empty: the lowest nonempty bucket becomes the front.
    void refill() noexcept {
        while (front_.empty() && !buckets_order_.empty()) {
            const std::uint32_t b = buckets_order_.back();
            buckets_order_.pop_back();
            lows_.pop_back();
            std::vector<Entry>& v = buckets_[b];
            front_.assign(v.begin(), v.end());
            release(b);
        }
        heapify();
    }

    void heapify() noexcept {
        const std::size_t n = front_.size();
        for (std::size_t i = 0; i < n; ++i) pos_[front_[i].handle] = kFront | static_cast<std::uint32_t>(i);
        for (std::size_t i = n / D + 1; i-- > 0;)
            if (i < n) sift_down(static_cast<std::uint32_t>(i));
    }

    void erase_at(std::uint32_t p, Handle h) noexcept {
        if (p & kFront) {
            remove_front(p & ~kFront);
            return;
        }
        const std::uint32_t b = p >> kBucketBits;
        const std::size_t s = p & kSlotMask;
        std::vector<Entry>& v = buckets_[b];
        pos_[h] = kNpos;
        if (s + 1 != v.size()) {
            v[s] = v.back();
            pos_[v[s].handle] = code(b, s);
        }
        v.pop_back();  // (an emptied bucket stays in place until it is the lowest)
    }

    void remove_front(std::uint32_t i) noexcept {
        pos_[front_[i].handle] = kNpos;
        const Entry last = front_.back();
        front_.pop_back();
        if (i < front_.size()) {
            front_[i] = last;
            pos_[last.handle] = kFront | i;
            if (i > 0 && last.key < front_[(i - 1) / D].key)
                sift_up(i);
            else
                sift_down(i);
        }
        if (front_.empty()) refill();
    }

    void place(std::uint32_t i, const Entry& e) noexcept {
        front_[i] = e;
        pos_[e.handle] = kFront | i;
    }

    void sift_up(std::uint32_t i) noexcept {
        const Entry e = front_[i];
        while (i > 0) {
            const std::uint32_t parent = (i - 1) / D;
            if (!(e.key < front_[parent].key)) break;
            place(i, front_[parent]);
            i = parent;
        }
        place(i, e);
    }

    void sift_down(std::uint32_t i) noexcept {
        const Entry e = front_[i];
        const std::size_t n = front_.size();
        for (;;) {
            const std::size_t first = static_cast<std::size_t>(i) * D + 1;
            if (first >= n) break;
            const std::size_t last = first + D < n ? first + D : n;
            std::size_t best = first;
            for (std::size_t c = first + 1; c < last; ++c) best = front_[c].key < front_[best].key ? c : best;
            if (!(front_[best].key < e.key)) break;
            place(i, front_[best]);
            i = static_cast<std::uint32_t>(best);
        }
        place(i, e);
    }

    static bool less_entry(const Entry& a, const Entry& b) noexcept { return a.key < b.key; }

    // a < b without branches where Key allows it (ReadyKey: both halves compared, then
    // combined), for the bounds search.
    static bool below(const Key& a, const Key& b) noexcept {
        if constexpr (std::is_same_v<Key, ReadyKey>) {
            const bool lt = a.key < b.key, eq = a.key == b.key, seq = a.seq < b.seq;
            return lt | (eq & seq);
        } else {
            return a < b;
        }
    }

    // What one split needs, got before anything changes: a free bucket, and room for one
    // more bound. (Cheap when they are there, as they are once the queue has been as
    // large before, or after reserve().)
    void reserve_split() {
        if (free_buckets_.empty()) new_bucket();
        if (buckets_order_.size() == buckets_order_.capacity()) buckets_order_.reserve(2 * buckets_order_.size() + 8);
        if (lows_.size() == lows_.capacity()) lows_.reserve(2 * lows_.size() + 8);
    }

    void new_bucket() {
        // (bucket ids and slots share the index's 31 bits below kFront)
        if (buckets_.size() >= (std::size_t{1} << (31 - kBucketBits)))
            throw std::length_error("BucketQueue: more than 2^31 entries");
        std::vector<Entry> v;
        v.reserve(kBucketMax);
        free_buckets_.reserve(buckets_.size() + 1);  // (so that release never allocates)
        buckets_.push_back(std::move(v));
        free_buckets_.push_back(static_cast<std::uint32_t>(buckets_.size() - 1));
    }

    std::uint32_t acquire() noexcept {
        const std::uint32_t b = free_buckets_.back();  // (reserve_split made sure of one)
        free_buckets_.pop_back();
        return b;
    }

    void release(std::uint32_t b) noexcept {
        buckets_[b].clear();  // (keeps its storage for reuse)
        free_buckets_.push_back(b);
    }

    std::vector<Entry> front_;                  // heap order
    std::vector<std::vector<Entry>> buckets_;   // by bucket id; unsorted
    std::vector<std::uint32_t> buckets_order_;  // bucket ids in use, from the highest bound to the lowest
    std::vector<Key> lows_;                     // their bounds, same order
    std::vector<std::uint32_t> free_buckets_;
    std::vector<std::uint32_t> pos_;            // handle -> position code
    std::size_t size_ = 0;
};

// The scheduler's ready queues.
using ReadyQueue = BucketQueue<ReadyKey>;

}  // namespace capsched
