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
#include <new>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// Allocates on 64-byte (cache line) boundaries, so that a heap can place each group of
// siblings in one line (see IndexedHeap::kPad). On Linux, a block of 4 MiB or more is
// aligned to 2 MiB and advised to use transparent huge pages (madvise; nothing happens
// where THP is off): the core's big arrays (request slab, heaps, position and id
// indexes) are read at random, and with 4 KiB pages most of those reads also miss the
// TLB once the arrays pass a few MiB.
namespace detail {
inline constexpr std::size_t kHugePage = std::size_t{2} << 20;
inline constexpr std::size_t kHugeFrom = std::size_t{4} << 20;

inline void* allocate_lines(std::size_t bytes) {
#if defined(__linux__)
    if (bytes >= kHugeFrom) {
        // (the whole huge pages of the block; the tail keeps small pages, so nothing is
        // allocated beyond what was asked for)
        void* p = ::operator new(bytes, std::align_val_t{kHugePage});
        (void)::madvise(p, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);  // advice: failure changes nothing
        return p;
    }
#endif
    return ::operator new(bytes, std::align_val_t{64});
}

// The size a position index grows to so that it holds handle h: the next power of two
// above h, at least 16 (IndexedHeap, BucketQueue).
inline std::size_t index_size_for(std::uint32_t h) noexcept {
    std::size_t n = 16;
    while (n <= h) n *= 2;
    return n;
}

inline void deallocate_lines(void* p, std::size_t bytes) noexcept {
#if defined(__linux__)
    if (bytes >= kHugeFrom) {
        ::operator delete(p, std::align_val_t{kHugePage});
        return;
    }
#endif
    (void)bytes;
    ::operator delete(p, std::align_val_t{64});
}
}  // namespace detail

template <class T>
struct LineAllocator {
    using value_type = T;
    LineAllocator() noexcept = default;
    template <class U>
    LineAllocator(const LineAllocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return static_cast<T*>(detail::allocate_lines(n * sizeof(T))); }
    void deallocate(T* p, std::size_t n) noexcept { detail::deallocate_lines(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const LineAllocator<U>&) const noexcept { return true; }
    template <class U>
    bool operator!=(const LineAllocator<U>&) const noexcept { return false; }
};

// Unused entries at the front of a line-aligned heap array when D entries fill whole
// cache lines (4 x 16 bytes: one): D - 1 of them put the children of i (D i + 1 .. D i +
// D) at D (i + 1) .. D (i + 1) + D - 1 of the array, whole lines, so a sift-down touches
// one line per level (for D = 4) instead of two. Shared by MinHeap and IndexedHeap.
template <class E, unsigned D>
inline constexpr std::size_t kLinePad = (D * sizeof(E)) % 64 == 0 ? D - 1 : 0;

// Storage of a heap's position index (handle -> slot in the heap array). By default each
// heap owns its index; heaps whose handle sets are disjoint (the per-tenant heaps of
// FairQueue) can share one through SharedPositions, so that their index costs 4 bytes
// per handle in all rather than per heap.
struct OwnPositions : std::vector<std::uint32_t, LineAllocator<std::uint32_t>> {
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

// A plain (not indexed) d-ary min-heap of small values under `Less`, laid out as
// IndexedHeap's array (kLinePad unused entries first). For the scheduler's timer
// heap, whose entries go stale rather than being erased: push, pop, rebuild after
// dropping entries. Pops come out in `Less` order whatever D is.
template <class T, class Less, unsigned D = 4>
class MinHeap {
    static_assert(D >= 2, "a d-ary heap needs D >= 2");
    static constexpr std::size_t kPad = kLinePad<T, D>;

  public:
    MinHeap() : v_(kPad) { v_.reserve(kPad + 1); }  // (see IndexedHeap())

    std::size_t size() const noexcept { return v_.size() - kPad; }
    bool empty() const noexcept { return v_.size() == kPad; }
    void reserve(std::size_t n) { v_.reserve(n + kPad); }
    const T& front() const noexcept { return v_[kPad]; }
    const T* begin() const noexcept { return v_.data() + kPad; }
    const T* end() const noexcept { return v_.data() + v_.size(); }

    void push(const T& x) {
        v_.push_back(x);
        std::size_t i = size() - 1;
        while (i > 0) {
            const std::size_t parent = (i - 1) / D;
            if (!less_(x, at(parent))) break;
            at(i) = at(parent);
            i = parent;
        }
        at(i) = x;
    }

    void pop() noexcept {
        CAPSCHED_ASSERT(!empty());
        const T last = v_.back();
        v_.pop_back();
        if (!empty()) sift_down(0, last);
    }

    // Drops the values for which drop(value) is true, then restores the order: O(n).
    template <class Drop>
    void drop_if(Drop drop) {
        std::size_t kept = kPad;
        for (std::size_t i = kPad; i < v_.size(); ++i)
            if (!drop(static_cast<const T&>(v_[i]))) v_[kept++] = v_[i];
        v_.resize(kept);
        const std::size_t n = size();
        for (std::size_t i = n / D + 1; i-- > 0;)
            if (i < n) sift_down(i, at(i));
    }

    // The heap order holds (for tests).
    bool valid() const noexcept {
        for (std::size_t i = 1; i < size(); ++i)
            if (less_(at(i), at((i - 1) / D))) return false;
        return true;
    }

  private:
    T& at(std::size_t i) noexcept { return v_[i + kPad]; }
    const T& at(std::size_t i) const noexcept { return v_[i + kPad]; }

    // Moves `x` (to be stored at i) down to its place.
    void sift_down(std::size_t i, const T x) noexcept {
        const std::size_t n = size();
        for (;;) {
            const std::size_t first = i * D + 1;
            if (first >= n) break;
            const std::size_t last = first + D < n ? first + D : n;
            std::size_t best = first;
            for (std::size_t c = first + 1; c < last; ++c) best = less_(at(c), at(best)) ? c : best;
            if (!less_(at(best), x)) break;
            at(i) = at(best);
            i = best;
        }
        at(i) = x;
    }

    static bool less_(const T& a, const T& b) noexcept { return Less{}(a, b); }

    std::vector<T, LineAllocator<T>> v_;
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
    static constexpr std::size_t kPad = kLinePad<Entry, D>;  // (see kLinePad)
    // (the entries, in heap order, without the padding)
    struct View {
        const Entry* first;
        const Entry* last;
        const Entry* begin() const noexcept { return first; }
        const Entry* end() const noexcept { return last; }
        std::size_t size() const noexcept { return static_cast<std::size_t>(last - first); }
        const Entry& operator[](std::size_t i) const noexcept { return first[i]; }
    };

    // (room for kPad + 1 from the start, so that growth by doubling lands on powers of
    // two: capacity kPad x 2^k would overshoot by up to half again)
    IndexedHeap() : heap_(kPad) { heap_.reserve(kPad + 1); }
    explicit IndexedHeap(Pos positions) : heap_(kPad), pos_(positions) { heap_.reserve(kPad + 1); }

    std::size_t size() const noexcept { return heap_.size() - kPad; }
    bool empty() const noexcept { return heap_.size() == kPad; }
    std::size_t capacity() const noexcept { return heap_.capacity() - kPad; }

    // Reserve room for `n` entries and handles below `n`.
    void reserve(std::size_t n) {
        heap_.reserve(n + kPad);
        if (pos_.size() < n) pos_.resize(n, kNpos);
    }

    bool contains(Handle h) const noexcept { return h < pos_.size() && pos_[h] != kNpos; }

    const Entry& top() const noexcept {
        CAPSCHED_ASSERT(!empty());
        return heap_[kPad];
    }

    const Key& key_of(Handle h) const noexcept {
        CAPSCHED_ASSERT(contains(h));
        return at(pos_[h]).key;
    }

    void push(Handle h, const Key& key) {
        CAPSCHED_ASSERT(!contains(h));
        if (h >= pos_.size()) pos_.resize(detail::index_size_for(h), kNpos);
        heap_.push_back(Entry{key, h});
        sift_up(static_cast<std::uint32_t>(size() - 1));
    }

    Handle pop() noexcept {
        CAPSCHED_ASSERT(!empty());
        const Handle h = top().handle;
        remove_at(0);
        return h;
    }

    // Change the key of a held handle; moves it up or down as needed.
    void update(Handle h, const Key& key) noexcept {
        CAPSCHED_ASSERT(contains(h));
        const std::uint32_t i = pos_[h];
        const bool up = key < at(i).key;
        at(i).key = key;
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
        for (const Entry& e : entries()) pos_[e.handle] = kNpos;
        heap_.resize(kPad);
    }

    // Read-only view of the entries (heap order, not sorted); for checks and checkpoints.
    View entries() const noexcept { return View{heap_.data() + kPad, heap_.data() + heap_.size()}; }

    // Verifies both invariants (and the padding's alignment); O(n). For tests.
    bool check_invariants() const noexcept {
        if (kPad != 0 && reinterpret_cast<std::uintptr_t>(heap_.data() + kPad + 1) % 64 != 0) return false;
        const View v = entries();
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (v[i].handle >= pos_.size() || pos_[v[i].handle] != i) return false;
            if (i > 0 && v[i].key < v[(i - 1) / D].key) return false;
        }
        if constexpr (Pos::kOwned) {  // (a shared index is checked by its owner)
            std::size_t held = 0;
            for (std::uint32_t p : pos_) held += (p != kNpos);
            return held == v.size();
        }
        return true;
    }

  private:
    Entry& at(std::size_t i) noexcept { return heap_[i + kPad]; }
    const Entry& at(std::size_t i) const noexcept { return heap_[i + kPad]; }

    void place(std::uint32_t i, const Entry& e) noexcept {
        at(i) = e;
        pos_[e.handle] = i;
    }

    void remove_at(std::uint32_t i) noexcept {
        pos_[at(i).handle] = kNpos;
        const Entry last = heap_.back();
        heap_.pop_back();
        if (i == size()) return;
        // Put the last entry in the hole, then restore order in whichever direction.
        at(i) = last;
        pos_[last.handle] = i;
        if (i > 0 && last.key < at((i - 1) / D).key)
            sift_up(i);
        else
            sift_down(i);
    }

    void sift_up(std::uint32_t i) noexcept {
        const Entry e = at(i);
        while (i > 0) {
            const std::uint32_t parent = (i - 1) / D;
            if (!(e.key < at(parent).key)) break;
            place(i, at(parent));
            i = parent;
        }
        place(i, e);
    }

    // The index of the smallest of the children [first, last) (cmov-friendly).
    std::size_t min_child(std::size_t first, std::size_t last) const noexcept {
        std::size_t best = first;
        for (std::size_t c = first + 1; c < last; ++c) best = at(c).key < at(best).key ? c : best;
        return best;
    }

    void sift_down(std::uint32_t i) noexcept {
        const Entry e = at(i);
        const std::size_t n = size();
        for (;;) {
            const std::size_t first = static_cast<std::size_t>(i) * D + 1;
            if (first >= n) break;
#if defined(__GNUC__)
            // The grandchildren are read next; fetch them while the children are compared
            // (hides the cache misses of the lower levels of a large heap). Padded: they
            // are whole lines, all fetched; else the first and the last entry.
            const std::size_t grand = first * D + 1;
            if (grand < n) {
                const Entry* g = heap_.data() + kPad + grand;
                if constexpr (kPad != 0) {
                    constexpr std::size_t kPerLine = 64 / sizeof(Entry);
                    for (std::size_t k = 0; k < D * D; k += kPerLine) __builtin_prefetch(g + k);
                } else {
                    __builtin_prefetch(g);
                    __builtin_prefetch(heap_.data() + kPad + (grand + D * D < n ? grand + D * D - 1 : n - 1));
                }
            }
#endif
            std::size_t best;
            if (first + D <= n) {
                // All D children exist (every level but the last): a fixed sequence of
                // compares the compiler unrolls, without the loop's bound and counter.
                best = first;
                for (unsigned c = 1; c < D; ++c) best = at(first + c).key < at(best).key ? first + c : best;
            } else {
                best = min_child(first, n);
            }
            if (!(at(best).key < e.key)) break;
            place(i, at(best));
            i = static_cast<std::uint32_t>(best);
        }
        place(i, e);
    }

    std::vector<Entry, LineAllocator<Entry>> heap_;  // kPad unused entries, then the heap
    Pos pos_;
};

}  // namespace capsched
