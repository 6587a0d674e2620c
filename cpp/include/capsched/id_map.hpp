// Open-addressing map from request id (u64, never 0) to slab handle (u32).
//
// The table holds only handles (4 bytes a slot); a slot's id is read from the slab through
// the `id_of` callable the caller passes, so memory is 4 / load bytes per live request
// (8 to 16 at the load factor kept here, 1/4 .. 1/2).
// Ids are issued in sequence. The identity hash would keep consecutive ids in consecutive
// slots (cheap inserts) but, as old ids linger, make linear probing cluster badly;
// Fibonacci hashing (multiply by 2^64 / golden ratio, keep the top bits) spreads them
// evenly but makes every insert a cache miss. So ids go in groups of 16 consecutive ids:
// a group's slots are one 64-byte line, and the groups are spread by Fibonacci hashing.
// Deletion shifts later members of the run back (no tombstones), so lookups stay short
// however long it lives.
// Allocation: only when the table doubles; reserve() up front keeps the hot path free of it.
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
    std::size_t memory_bytes() const noexcept { return slots_.capacity() * sizeof(Handle); }

    template <class IdOf>
    void reserve(std::size_t n, IdOf id_of) {
        std::size_t cap = slots_.size();
        while (n * 2 > cap) cap *= 2;
        if (cap != slots_.size()) rehash(cap, id_of);
    }

    template <class IdOf>
    Handle find(std::uint64_t id, IdOf id_of) const noexcept {
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t i = home(id); ; i = (i + 1) & mask) {
            const Handle h = slots_[i];
            if (h == kNoHandle || id_of(h) == id) return h;
        }
    }

    // Precondition: id_of(h) is the id, and it is not present.
    template <class IdOf>
    void insert(Handle h, IdOf id_of) {
        if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2, id_of);
        put(h, id_of(h));
        ++size_;
    }

    template <class IdOf>
    bool erase(std::uint64_t id, IdOf id_of) noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t i = home(id);
        for (;; i = (i + 1) & mask) {
            if (slots_[i] == kNoHandle) return false;
            if (id_of(slots_[i]) == id) break;
        }
        // Backward shift: pull later members of the run into the hole unless their home
        // lies cyclically in (hole, j].
        std::size_t hole = i;
        for (std::size_t j = (i + 1) & mask; slots_[j] != kNoHandle; j = (j + 1) & mask) {
            const std::size_t h = home(id_of(slots_[j]));
            const bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
            if (!stays) {
                slots_[hole] = slots_[j];
                hole = j;
            }
        }
        slots_[hole] = kNoHandle;
        --size_;
        return true;
    }

  private:
    std::size_t home(std::uint64_t id) const noexcept {
        // shift_ = 64 - log2(slots): the group's hash keeps log2(slots) - 4 top bits.
        const std::uint64_t group = ((id >> 4) * 0x9E3779B97F4A7C15ull) >> (shift_ + 4);
        return static_cast<std::size_t>((group << 4) | (id & 15u));
    }

    void put(Handle h, std::uint64_t id) noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t i = home(id);
        while (slots_[i] != kNoHandle) i = (i + 1) & mask;
        slots_[i] = h;
    }

    template <class IdOf>
    void rehash(std::size_t cap, IdOf id_of) {
        std::vector<Handle> old(cap, kNoHandle);
        old.swap(slots_);
        shift_ = 64;
        for (std::size_t c = cap; c > 1; c >>= 1) --shift_;
        for (const Handle h : old)
            if (h != kNoHandle) put(h, id_of(h));
    }

    std::vector<Handle> slots_;
    unsigned shift_ = 58;  // 64 - log2(slots_.size())
    std::size_t size_ = 0;
};

}  // namespace capsched
