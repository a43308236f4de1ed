/*
 * supervisor.h - the main process: owns the configuration, the listening
 * sockets, the shared memory, the eventfds and the child table.
 */
#ifndef IOTD_SUPERVISOR_H
#define IOTD_SUPERVISOR_H

#include "config.h"

/* Runs the daemon until it is told to stop; returns the exit status. */
int supervisor_main(struct iotd_config *cfg, const struct cli_args *args);

#endif
