/*
 * roles.h - a role of the daemon run in a child by a unit test that plays
 * its supervisor: a monotonic clock for the test's deadlines, and the
 * workers' states and eventfds the supervisor sets up before its first
 * fork. Included after <cmocka.h>.
 */
#ifndef IOTD_TEST_ROLES_H
#define IOTD_TEST_ROLES_H

#include <stdint.h>
#include <sys/eventfd.h>
#include <time.h>

#include "role.h"
#include "shm.h"

static inline uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Workers 0 to n - 1 up and serving as epoch 1, as after a start, each
 * with room for 1000 connections and its eventfd in env; the router's
 * eventfd too.
 */
static inline void workers_started(struct shm_sup *sup, struct role_env *env, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		atomic_store(&sup->workers[i].epoch, 1);
		atomic_store(&sup->workers[i].up, 1);
		atomic_store(&sup->workers[i].capacity, 1000);
		atomic_store(&sup->workers[i].ready_epoch, 1);
		env->worker_efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		assert_true(env->worker_efd[i] >= 0);
	}
	env->router_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	assert_true(env->router_efd >= 0);
}

#endif
