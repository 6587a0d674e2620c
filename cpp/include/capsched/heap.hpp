// Indexed d-ary min-heap of handles.
//
// Elements are small integer handles (slots of a slab owned by the caller). Each handle
// is in the heap at most once; a position index (handle -> slot in the heap array) makes
// update-key and erase-by-handle O(log n) instead of O(n).
//
// Invariants (checked by CAPSCHED_ASSERT when CAPSCHED_DEBUG is defined):
//   * for every i > 0: !(less(heap_[i], heap_[parent(i)]))
//   * pos_[heap_[i].handle] == i for every i, and pos_[h] == kNpos for handles not held.
// Complexity: push, pop, update, erase O(D log_D n); top, contains O(1).
// Allocation: only when a handle beyond the reserved range is first pushed, or the heap
// array grows past its reserved size; reserve() up front to keep the hot path free of it.
// Exception guarantee: strong for push (nothing changes if growing throws); the other
// operations do not allocate and do not throw on valid input.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef CAPSCHED_DEBUG
#define CAPSCHED_ASSERT(x) assert(x)
#else
#define CAPSCHED_ASSERT(x) ((void)0)
#endif

namespace capsched {

using Handle = std::uint32_t;
inline constexpr Handle kNoHandle = std::numeric_limits<Handle>::max();

// Key of a heap entry: a double, ties broken by a 64-bit sequence number so that the
// order is total and deterministic (callers pass the request id).
struct HeapKey {
    double key;
    std::uint64_t seq;
    friend bool operator<(const HeapKey& a, const HeapKey& b) noexcept {
        return a.key < b.key || (a.key == b.key && a.seq < b.seq);
    }
};

// A 12-byte key for the scheduler's ready queues: (key, low 32 bits of the id), so that a
// heap entry (key + handle) is 16 bytes and four siblings share one 64-byte line. Ties
// are broken by the low 32 bits of the id: id order, unless two requests with the very
// same key have ids that straddle a multiple of 2^32.
#pragma pack(push, 4)
struct ReadyKey {
    double key;
    std::uint32_t seq;
    friend bool operator<(const ReadyKey& a, const ReadyKey& b) noexcept {
        const double ak = a.key, bk = b.key;
        return ak < bk || (ak == bk && a.seq < b.seq);
    }
};
#pragma pack(pop)
static_assert(sizeof(ReadyKey) == 12, "ReadyKey packs to 12 bytes");

// Storage of a heap's position index (handle -> slot in the heap array). By default each
// heap owns its index; heaps whose handle sets are disjoint (the per-tenant heaps of
// FairQueue) can share one through SharedPositions, so that their index costs 4 bytes
// per handle in all rather than per heap.
struct OwnPositions : std::vector<std::uint32_t> {
    static constexpr bool kOwned = true;
};

class SharedPositions {
  public:
    static constexpr bool kOwned = false;
    explicit SharedPositions(std::vector<std::uint32_t>* v = nullptr) noexcept : v_(v) {}
    std::uint32_t& operator[](std::size_t i) noexcept { return (*v_)[i]; }
    const std::uint32_t& operator[](std::size_t i) const noexcept { return (*v_)[i]; }
    std::size_t size() const noexcept { return v_->size(); }
    void resize(std::size_t n, std::uint32_t fill) { v_->resize(n, fill); }

  private:
    std::vector<std::uint32_t>* v_;
};

template <class Key = HeapKey, unsigned D = 4, class Pos = OwnPositions>
class IndexedHeap {
    static_assert(D >= 2, "a d-ary heap needs D >= 2");

  public:
    struct Entry {
        Key key;
        Handle handle;
    };
    static constexpr std::uint32_t kNpos = std::numeric_limits<std::uint32_t>::max();

    IndexedHeap() = default;
    explicit IndexedHeap(Pos positions) : pos_(positions) {}

    std::size_t size() const noexcept { return heap_.size(); }
    bool empty() const noexcept { return heap_.empty(); }

    // Reserve room for `n` entries and handles below `n`.
    void reserve(std::size_t n) {
        heap_.reserve(n);
        if (pos_.size() < n) pos_.resize(n, kNpos);
    }

    bool contains(Handle h) const noexcept { return h < pos_.size() && pos_[h] != kNpos; }

    const Entry& top() const noexcept {
        CAPSCHED_ASSERT(!heap_.empty());
        return heap_.front();
    }

    const Key& key_of(Handle h) const noexcept {
        CAPSCHED_ASSERT(contains(h));
        return heap_[pos_[h]].key;
    }

    void push(Handle h, const Key& key) {
        CAPSCHED_ASSERT(!contains(h));
        if (h >= pos_.size()) pos_.resize(grow_to(h), kNpos);
        heap_.push_back(Entry{key, h});
        sift_up(static_cast<std::uint32_t>(heap_.size() - 1));
    }

    Handle pop() noexcept {
        CAPSCHED_ASSERT(!heap_.empty());
        const Handle h = heap_.front().handle;
        remove_at(0);
        return h;
    }

    // Change the key of a held handle; moves it up or down as needed.
    void update(Handle h, const Key& key) noexcept {
        CAPSCHED_ASSERT(contains(h));
        const std::uint32_t i = pos_[h];
        const bool up = key < heap_[i].key;
        heap_[i].key = key;
        if (up)
            sift_up(i);
        else
            sift_down(i);
    }

    // Remove a handle if held; returns whether it was.
    bool erase(Handle h) noexcept {
        if (!contains(h)) return false;
        remove_at(pos_[h]);
        return true;
    }

    void clear() noexcept {
        for (const Entry& e : heap_) pos_[e.handle] = kNpos;
        heap_.clear();
    }

    // Read-only view of the array (heap order, not sorted); for checks and checkpoints.
    const std::vector<Entry>& entries() const noexcept { return heap_; }

    // Verifies both invariants; O(n). For tests.
    bool check_invariants() const noexcept {
        for (std::size_t i = 0; i < heap_.size(); ++i) {
            if (heap_[i].handle >= pos_.size() || pos_[heap_[i].handle] != i) return false;
            if (i > 0 && heap_[i].key < heap_[(i - 1) / D].key) return false;
        }
        if constexpr (Pos::kOwned) {  // (a shared index is checked by its owner)
            std::size_t held = 0;
            for (std::uint32_t p : pos_) held += (p != kNpos);
            return held == heap_.size();
        }
        return true;
    }

  private:
    static std::size_t grow_to(Handle h) {
        std::size_t n = 16;
        while (n <= h) n *= 2;
        return n;
    }

    void place(std::uint32_t i, const Entry& e) noexcept {
        heap_[i] = e;
        pos_[e.handle] = i;
    }

    void remove_at(std::uint32_t i) noexcept {
        pos_[heap_[i].handle] = kNpos;
        const Entry last = heap_.back();
        heap_.pop_back();
        if (i == heap_.size()) return;
        // Put the last entry in the hole, then restore order in whichever direction.
        heap_[i] = last;
        pos_[last.handle] = i;
        if (i > 0 && last.key < heap_[(i - 1) / D].key)
            sift_up(i);
        else
            sift_down(i);
    }

    void sift_up(std::uint32_t i) noexcept {
        const Entry e = heap_[i];
        while (i > 0) {
            const std::uint32_t parent = (i - 1) / D;
            if (!(e.key < heap_[parent].key)) break;
            place(i, heap_[parent]);
            i = parent;
        }
        place(i, e);
    }

    // The index of the smallest of the children [first, last) (cmov-friendly).
    std::size_t min_child(std::size_t first, std::size_t last) const noexcept {
        std::size_t best = first;
        for (std::size_t c = first + 1; c < last; ++c) best = heap_[c].key < heap_[best].key ? c : best;
        return best;
    }

    void sift_down(std::uint32_t i) noexcept {
        const Entry e = heap_[i];
        const std::size_t n = heap_.size();
        for (;;) {
            const std::size_t first = static_cast<std::size_t>(i) * D + 1;
            if (first >= n) break;
#if defined(__GNUC__)
            // The grandchildren are read next; fetch them while the children are compared
            // (hides the cache misses of the lower levels of a large heap).
            const std::size_t grand = first * D + 1;
            if (grand < n) {
                __builtin_prefetch(heap_.data() + grand);
                __builtin_prefetch(heap_.data() + (grand + D * D < n ? grand + D * D - 1 : n - 1));
            }
#endif
            const std::size_t best = min_child(first, first + D < n ? first + D : n);
            if (!(heap_[best].key < e.key)) break;
            place(i, heap_[best]);
            i = static_cast<std::uint32_t>(best);
        }
        place(i, e);
    }

    std::vector<Entry> heap_;
    Pos pos_;
};

}  // namespace capsched
