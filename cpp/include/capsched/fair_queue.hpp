// The normal-class ready queue under weighted fair share between tenants (a virtual
// token counter, as VTC does: Sheng et al., "Fairness in Serving Large Language Models",
// OSDI 2024). docs/policies.md, "Fair share between tenants", gives the rule.
//
// Each tenant has its own heap of queued requests in the policy's order and a counter of
// the service it has been given (weighted tokens over the tenant's weight). The head of
// the queue is the head of the tenant with the smallest counter; ties go to the better
// head request (its policy key, then its id), so with equal counters the order is the
// policy's. The tenants with queued requests are themselves in a heap keyed by
// (counter, head key), updated whenever a tenant's counter or head changes.
//
// The counters are the scheduler's to change (set_counter); this class only keeps the
// order. Per-tenant heaps share one position index (SharedPositions), so the structure
// costs 4 bytes per request handle plus a few dozen bytes per tenant ever seen.
//
// Complexity: push, pop, erase, update O(log n + log T) for n queued and T tenants with
// queued requests; top O(1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "capsched/heap.hpp"

namespace capsched {

// A tenant's place among the tenants with queued requests: its counter, then its head.
struct TenantKey {
    double vtc;
    ReadyKey head;
    friend bool operator<(const TenantKey& a, const TenantKey& b) noexcept {
        return a.vtc < b.vtc || (a.vtc == b.vtc && a.head < b.head);
    }
};

class FairQueue {
  public:
    using Heap = IndexedHeap<ReadyKey, 4, SharedPositions>;
    using Entry = Heap::Entry;
    static constexpr std::uint32_t kNpos = Heap::kNpos;

    FairQueue() : pos_(std::make_unique<std::vector<std::uint32_t>>()) {}

    // Pre-sizes the position index for handles < n.
    void reserve(std::size_t n) {
        if (pos_->size() < n) pos_->resize(n, kNpos);
    }

    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    bool contains(Handle h) const noexcept { return h < pos_->size() && (*pos_)[h] != kNpos; }
    // Queued requests of a tenant.
    std::size_t tenant_size(std::uint32_t t) const noexcept { return t < heaps_.size() ? heaps_[t].size() : 0; }

    // The head: the best request of the tenant with the smallest (counter, head).
    const Entry& top() const noexcept { return heaps_[tenants_.top().handle].top(); }
    std::uint32_t top_tenant() const noexcept { return tenants_.top().handle; }
    const ReadyKey& key_of(std::uint32_t t, Handle h) const noexcept { return heaps_[t].key_of(h); }

    void push(std::uint32_t t, Handle h, const ReadyKey& key) {
        grow(t);
        heaps_[t].push(h, key);
        ++size_;
        sync(t);
    }
    Handle pop() {
        const std::uint32_t t = top_tenant();
        const Handle h = heaps_[t].pop();
        --size_;
        sync(t);
        return h;
    }
    void erase(std::uint32_t t, Handle h) {
        if (!heaps_[t].erase(h)) return;
        --size_;
        sync(t);
    }
    void update(std::uint32_t t, Handle h, const ReadyKey& key) {
        heaps_[t].update(h, key);
        sync(t);
    }

    double counter(std::uint32_t t) const noexcept { return t < vtc_.size() ? vtc_[t] : 0.0; }
    void set_counter(std::uint32_t t, double v) {
        grow(t);
        vtc_[t] = v;
        sync(t);
    }
    // Every counter, by tenant id (tenants never seen: 0).
    const std::vector<double>& counters() const noexcept { return vtc_; }
    // The entries of a tenant's heap, in heap order (for checks and snapshots).
    typename Heap::View entries(std::uint32_t t) const noexcept { return heaps_[t].entries(); }
    std::size_t num_tenants() const noexcept { return heaps_.size(); }

    bool check_invariants() const noexcept {
        std::size_t total = 0;
        for (std::uint32_t t = 0; t < heaps_.size(); ++t) {
            const Heap& q = heaps_[t];
            if (!q.check_invariants()) return false;
            total += q.size();
            if (q.empty() != !tenants_.contains(t)) return false;
            if (!q.empty()) {
                const TenantKey& k = tenants_.key_of(t);
                if (k.vtc != vtc_[t] || k.head.key != q.top().key.key || k.head.seq != q.top().key.seq) return false;
            }
        }
        std::size_t held = 0;
        for (std::uint32_t p : *pos_) held += (p != kNpos);
        return total == size_ && held == size_ && tenants_.check_invariants();
    }

  private:
    void grow(std::uint32_t t) {
        while (heaps_.size() <= t) heaps_.emplace_back(SharedPositions(pos_.get()));
        if (vtc_.size() <= t) vtc_.resize(t + std::size_t{1}, 0.0);
    }
    // Brings tenant t's place among the tenants in step with its counter and head.
    void sync(std::uint32_t t) {
        const Heap& q = heaps_[t];
        if (q.empty()) {
            tenants_.erase(t);
            return;
        }
        const TenantKey k{vtc_[t], q.top().key};
        if (!tenants_.contains(t)) {
            tenants_.push(t, k);
            return;
        }
        const TenantKey& old = tenants_.key_of(t);
        if (old.vtc != k.vtc || old.head.key != k.head.key || old.head.seq != k.head.seq) tenants_.update(t, k);
    }

    std::unique_ptr<std::vector<std::uint32_t>> pos_;  // by handle, shared by heaps_
    std::vector<Heap> heaps_;                          // by tenant
    std::vector<double> vtc_;                          // by tenant
    IndexedHeap<TenantKey> tenants_;                   // tenants with queued requests
    std::size_t size_ = 0;
};

}  // namespace capsched
