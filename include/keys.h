/*
 * keys.h - what the rest of iotd asks of the key role's code besides its
 * entry point (keys_main, role.h): whether its files load, for `iotd -t`.
 */
#ifndef IOTD_KEYS_H
#define IOTD_KEYS_H

#include <stddef.h>

#include "config.h"

/*
 * Load the key role's files as it does at start (the key checked against
 * the certificate), then let them go. Only for `iotd -t`, which exits
 * next: the supervisor never reads the key, since every child it forks
 * would inherit its memory. Returns 0 (also without TLS), or -1 with a
 * message in err naming the file.
 */
int keys_files_check(const struct iotd_config *cfg, char *err, size_t errlen);

#endif
