// Flat open-addressing map from request id (u64, never 0) to slab handle (u32).
//
// Ids are issued sequentially, so the identity hash modulo a power of two spreads the
// live window over distinct slots and linear probing rarely probes twice. Deletion uses
// backward shifting (no tombstones), so lookups stay short however long the map lives.
// Load factor <= 3/4; the table doubles when it would pass that, and never shrinks
// (memory follows the peak number of live requests, not the number ever submitted).
// Allocation: only when growing; reserve() up front keeps the hot path free of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "capsched/heap.hpp"

namespace capsched {

class IdMap {
  public:
    IdMap() { slots_.resize(16); }

    std::size_t size() const noexcept { return size_; }

    void reserve(std::size_t n) {
        std::size_t cap = slots_.size();
        while (n * 4 > cap * 3) cap *= 2;
        if (cap != slots_.size()) rehash(cap);
    }

    Handle find(std::uint64_t id) const noexcept {
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t i = id & mask;; i = (i + 1) & mask) {
            if (slots_[i].id == id) return slots_[i].handle;
            if (slots_[i].id == 0) return kNoHandle;
        }
    }

    // Precondition: id != 0 and not present.
    void insert(std::uint64_t id, Handle h) {
        if ((size_ + 1) * 4 > slots_.size() * 3) rehash(slots_.size() * 2);
        put(id, h);
        ++size_;
    }

    bool erase(std::uint64_t id) noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t i = id & mask;
        for (;; i = (i + 1) & mask) {
            if (slots_[i].id == id) break;
            if (slots_[i].id == 0) return false;
        }
        // Backward-shift: pull later members of the probe run into the hole.
        std::size_t hole = i;
        for (std::size_t j = (i + 1) & mask; slots_[j].id != 0; j = (j + 1) & mask) {
            const std::size_t home = slots_[j].id & mask;
            // Move j into the hole unless its home lies cyclically in (hole, j].
            const bool home_after_hole = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
            if (!home_after_hole) {
                slots_[hole] = slots_[j];
                hole = j;
            }
        }
        slots_[hole] = Slot{};
        --size_;
        return true;
    }

    std::size_t capacity() const noexcept { return slots_.size(); }
    std::size_t memory_bytes() const noexcept { return slots_.capacity() * sizeof(Slot); }

  private:
    struct Slot {
        std::uint64_t id = 0;
        Handle handle = kNoHandle;
    };

    void put(std::uint64_t id, Handle h) noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t i = id & mask;
        while (slots_[i].id != 0) i = (i + 1) & mask;
        slots_[i] = Slot{id, h};
    }

    void rehash(std::size_t cap) {
        std::vector<Slot> old(cap);
        old.swap(slots_);
        for (const Slot& s : old)
            if (s.id != 0) put(s.id, s.handle);
    }

    std::vector<Slot> slots_;
    std::size_t size_ = 0;
};

}  // namespace capsched
