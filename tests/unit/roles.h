/*
 * roles.h - for the unit tests that run a role of the daemon in a child and
 * play its supervisor: a monotonic clock for their deadlines, the workers'
 * states and eventfds the supervisor sets up before its first fork, and
 * the fork of the child with its control socket. Included after
 * <cmocka.h>.
 */
#ifndef IOTD_TEST_ROLES_H
#define IOTD_TEST_ROLES_H

#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "role.h"
#include "shm.h"

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

/*
 * Forks the child that is to run a role, as the supervisor does: the
 * child's end of its control socket in env->ctl_fd, ours in *ctl, each
 * side closing the other's. fork()'s result: 0 in the child.
 */
static inline pid_t fork_role(struct role_env *env, int *ctl)
{
	int sv[2];
	pid_t pid;

	assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	env->ctl_fd = sv[1];
	*ctl = sv[0];
	pid = fork();
	assert_true(pid >= 0);
	close(pid == 0 ? sv[0] : sv[1]);
	return pid;
}

#endif
