/*
 * auth.h - what the rest of iotd asks of the auth role's code besides its
 * entry point (auth_main, role.h): whether its files parse.
 */
#ifndef IOTD_AUTH_H
#define IOTD_AUTH_H

#include <stddef.h>

#include "config.h"

/*
 * Read and parse every file cfg gives the auth role (password, JWT keys,
 * ACL), then let them go: at start and when a reload names other files,
 * so that a file that does not parse stops the start (or the reload) with
 * its message, instead of an auth role that cannot start. Returns 0
 * (also when the configuration needs no auth role), or -1 with a message
 * in err naming the file and line.
 */
int auth_files_check(const struct iotd_config *cfg, char *err, size_t errlen);

#endif
