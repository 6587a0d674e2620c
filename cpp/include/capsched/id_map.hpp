// Open-addressing map from request id (u64, never 0, issued 1, 2, 3, ...) to slab handle
// (u32).
//
// The table holds only handles (4 bytes a slot); a slot's id is read from the slab through
// the `id_of` callable the caller passes, so memory is 4 / load bytes per live request
// (8 to 16 at the load factor kept here, 1/4 .. 1/2).
// Ids are issued in sequence. The identity hash would keep consecutive ids in consecutive
// slots (cheap inserts) but, as old ids linger, make linear probing cluster badly;
// Fibonacci hashing (multiply by 2^64 / golden ratio, keep the top bits) spreads them
// evenly but makes every insert a cache miss. So ids go in groups of 16 consecutive ids:
// a group's slots are one 64-byte line, and the groups are spread by Fibonacci hashing.
// Which ids are live is kept in a bitset over the ids inserted so far (1 bit per id, like
// the scheduler's 2-bit outcome record): a lookup of an id that is not live answers
// without probing, and a live id is always found, so probing never needs an "empty"
// marker to stop at. So erasing just frees the slot and clears the bit: no backward
// shift, which would read the id (a slab access) of every later member of the run.
// Allocation: when the table doubles, and one bitset word per 64 ids issued; reserve()
// up front keeps the table's growth off the hot path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "capsched/heap.hpp"

namespace capsched {

class IdMap {
  public:
    IdMap() { slots_.assign(64, kNoHandle); }  // (at least 4 groups: see home())

    std::size_t size() const noexcept { return size_; }
    std::size_t memory_bytes() const noexcept {
        return slots_.capacity() * sizeof(Handle) + live_.capacity() * sizeof(std::uint64_t);
    }

    template <class IdOf>
    void reserve(std::size_t n, IdOf id_of) {
        std::size_t cap = slots_.size();
        while (n * 2 > cap) cap *= 2;
        if (cap != slots_.size()) rehash(cap, id_of);
    }

    bool contains(std::uint64_t id) const noexcept {
        const std::uint64_t w = id / 64;
        return w < live_.size() && ((live_[w] >> (id % 64)) & 1u) != 0;
    }

    template <class IdOf>
    Handle find(std::uint64_t id, IdOf id_of) const noexcept {
        return contains(id) ? slots_[slot_of(id, id_of)] : kNoHandle;
    }

    // Prefetch hints for a lookup soon: the id's home slot, and the handle found there now
    // (usually the id's own; only a hint, never dereferenced here).
    void prefetch(std::uint64_t id) const noexcept {
#if defined(__GNUC__)
        __builtin_prefetch(slots_.data() + home(id));
#else
        (void)id;
#endif
    }
    Handle home_handle(std::uint64_t id) const noexcept { return slots_[home(id)]; }

    // Precondition: id_of(h) is the id, and it is not present.
    template <class IdOf>
    void insert(Handle h, IdOf id_of) {
        const std::uint64_t id = id_of(h);
        if (id / 64 >= live_.size()) live_.resize(static_cast<std::size_t>(id / 64) + 1, 0);  // (amortised)
        if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2, id_of);
        put(h, id);
        live_[id / 64] |= std::uint64_t{1} << (id % 64);
        ++size_;
    }

    template <class IdOf>
    bool erase(std::uint64_t id, IdOf id_of) noexcept {
        if (!contains(id)) return false;
        slots_[slot_of(id, id_of)] = kNoHandle;
        live_[id / 64] &= ~(std::uint64_t{1} << (id % 64));
        --size_;
        return true;
    }

  private:
    std::size_t home(std::uint64_t id) const noexcept {
        // shift_ = 64 - log2(slots): the group's hash keeps log2(slots) - 4 top bits.
        const std::uint64_t group = ((id >> 4) * 0x9E3779B97F4A7C15ull) >> (shift_ + 4);
        return static_cast<std::size_t>((group << 4) | (id & 15u));
    }

    // The slot of a live id: the first from its home that holds it (free slots passed
    // over: a member of the run may have left after the id was placed beyond it).
    template <class IdOf>
    std::size_t slot_of(std::uint64_t id, IdOf id_of) const noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t i = home(id);
        for (std::size_t n = 0; n < slots_.size(); ++n, i = (i + 1) & mask) {
            const Handle h = slots_[i];
            if (h != kNoHandle && id_of(h) == id) return i;
        }
        return 0;  // (unreachable: a live id is in the table)
    }

    void put(Handle h, std::uint64_t id) noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t i = home(id);
        while (slots_[i] != kNoHandle) i = (i + 1) & mask;
        slots_[i] = h;
    }

    template <class IdOf>
    void rehash(std::size_t cap, IdOf id_of) {
        std::vector<Handle, LineAllocator<Handle>> old(cap, kNoHandle);
        old.swap(slots_);
        shift_ = 64;
        for (std::size_t c = cap; c > 1; c >>= 1) --shift_;
        for (const Handle h : old)
            if (h != kNoHandle) put(h, id_of(h));
    }

    std::vector<Handle, LineAllocator<Handle>> slots_;
    std::vector<std::uint64_t> live_;  // bit per id inserted so far: live
    unsigned shift_ = 58;  // 64 - log2(slots_.size())
    std::size_t size_ = 0;
};

}  // namespace capsched
