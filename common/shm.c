/*
 * shm.c - creating the daemon's shared-memory regions and mapping, for
 * each role, only those it needs: writable where it is the region's one
 * writer, read-only (from a descriptor opened read-only) elsewhere. See
 * shm.h for which role writes which region.
 *
 * Owns the regions' sizes and the rings' geometry: both are computed here
 * from nworkers and ring_size, never read from shared memory.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"
#include "shm.h"

static_assert(sizeof(struct shm_worker) <= SHM_HDR_BYTES, "worker header fits its page");
static_assert(sizeof(struct shm_router_ring) <= SHM_HDR_BYTES, "router ring header fits its page");

enum shm_access { SHM_NONE, SHM_RO, SHM_RW };

static size_t page_round(size_t n)
{
	return (n + 4095) & ~(size_t)4095;
}

static size_t shm_region_len(unsigned region, size_t ring_size)
{
	switch (region) {
	case SHM_SUP: return page_round(sizeof(struct shm_sup));
	case SHM_LISTENER: return page_round(sizeof(struct shm_listener));
	case SHM_ROUTER: return page_round(sizeof(struct shm_router));
	case SHM_JOURNAL: return page_round(sizeof(struct router_journal));
	default: return SHM_HDR_BYTES + ring_size;
	}
}

static bool shm_region_used(unsigned region, unsigned nworkers)
{
	if (region >= SHM_ROUTER_RING0)
		return region - SHM_ROUTER_RING0 < nworkers;
	if (region >= SHM_WORKER0)
		return region - SHM_WORKER0 < nworkers;
	return true;
}

/* How 'role' (worker 'index') may see region. */
static enum shm_access shm_access(enum iotd_role role, unsigned index, unsigned region)
{
	bool worker = region >= SHM_WORKER0 && region < SHM_ROUTER_RING0;
	bool ring = region >= SHM_ROUTER_RING0;
	unsigned i = ring ? region - SHM_ROUTER_RING0 : worker ? region - SHM_WORKER0 : 0;

	switch (role) {
	case ROLE_SUPERVISOR:
		if (region == SHM_SUP)
			return SHM_RW;
		return region == SHM_ROUTER || worker ? SHM_RO : SHM_NONE;
	case ROLE_LISTENER:
		if (region == SHM_LISTENER)
			return SHM_RW;
		return region == SHM_SUP || worker ? SHM_RO : SHM_NONE;
	case ROLE_ROUTER:
		if (region == SHM_ROUTER || region == SHM_JOURNAL || ring)
			return SHM_RW;
		return region == SHM_SUP || worker ? SHM_RO : SHM_NONE;
	case ROLE_WORKER:
		if (worker && i == index)
			return SHM_RW;
		if (region == SHM_SUP || region == SHM_ROUTER || (ring && i == index))
			return SHM_RO;
		return SHM_NONE;
	default:
		return SHM_NONE;
	}
}

/* A second descriptor for the same memory that can never map it writable. */
static int shm_reopen_ro(int fd)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	return open(path, O_RDONLY | O_CLOEXEC);
}

int shm_create(struct shm_set *set, unsigned nworkers, size_t ring_size)
{
	memset(set, 0, sizeof(*set));
	set->nworkers = nworkers;
	set->ring_size = ring_size;
	for (unsigned k = 0; k < SHM_NREGIONS; k++)
		set->rw[k] = set->ro[k] = -1;
	for (unsigned k = 0; k < SHM_NREGIONS; k++) {
		if (!shm_region_used(k, nworkers))
			continue;
		set->rw[k] = memfd_create("iotd-shm", MFD_CLOEXEC);
		if (set->rw[k] < 0 || ftruncate(set->rw[k], (off_t)shm_region_len(k, ring_size)) < 0) {
			log_error("cannot create shared memory: %s", strerror(errno));
			goto fail;
		}
		set->ro[k] = shm_reopen_ro(set->rw[k]);
		if (set->ro[k] < 0) {
			log_error("cannot reopen shared memory read-only through /proc/self/fd: %s",
				  strerror(errno));
			goto fail;
		}
	}
	return 0;
fail:
	shm_close(set);
	return -1;
}

static void shm_rings(struct shm_map *m)
{
	for (unsigned i = 0; i < m->nworkers; i++) {
		struct shm_worker *w = m->worker[i];
		struct shm_router_ring *rr = m->router_ring[i];

		if (w == NULL || rr == NULL)
			continue;
		shmring_view(&m->w2r[i], &w->w2r, &rr->w2r, (char *)w + SHM_HDR_BYTES,
			     m->ring_size);
		shmring_view(&m->r2w[i], &rr->r2w, &w->r2w, (char *)rr + SHM_HDR_BYTES,
			     m->ring_size);
	}
}

static void shm_name(struct shm_map *m, unsigned k, void *addr)
{
	if (k == SHM_SUP)
		m->sup = addr;
	else if (k == SHM_LISTENER)
		m->listener = addr;
	else if (k == SHM_ROUTER)
		m->router = addr;
	else if (k == SHM_JOURNAL)
		m->journal = addr;
	else if (k >= SHM_ROUTER_RING0)
		m->router_ring[k - SHM_ROUTER_RING0] = addr;
	else
		m->worker[k - SHM_WORKER0] = addr;
}

int shm_map_role(struct shm_map *m, const struct shm_set *set, enum iotd_role role,
		 unsigned index)
{
	memset(m, 0, sizeof(*m));
	m->nworkers = set->nworkers;
	m->ring_size = set->ring_size;
	for (unsigned k = 0; k < SHM_NREGIONS; k++) {
		enum shm_access a = shm_access(role, index, k);
		size_t len = shm_region_len(k, set->ring_size);
		void *addr;

		if (a == SHM_NONE || set->rw[k] < 0)
			continue;
		addr = mmap(NULL, len, a == SHM_RW ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED,
			    a == SHM_RW ? set->rw[k] : set->ro[k], 0);
		if (addr == MAP_FAILED) {
			log_error("cannot map shared memory: %s", strerror(errno));
			shm_unmap(m);
			return -1;
		}
		m->addr[k] = addr;
		m->len[k] = len;
		shm_name(m, k, addr);
	}
	shm_rings(m);
	return 0;
}

void shm_unmap(struct shm_map *m)
{
	unsigned nworkers = m->nworkers;
	size_t ring_size = m->ring_size;

	for (unsigned k = 0; k < SHM_NREGIONS; k++)
		if (m->addr[k] != NULL)
			munmap(m->addr[k], m->len[k]);
	memset(m, 0, sizeof(*m));
	m->nworkers = nworkers;
	m->ring_size = ring_size;
}

void shm_close(struct shm_set *set)
{
	for (unsigned k = 0; k < SHM_NREGIONS; k++) {
		if (set->rw[k] >= 0)
			close(set->rw[k]);
		if (set->ro[k] >= 0)
			close(set->ro[k]);
		set->rw[k] = set->ro[k] = -1;
	}
}
