/*
 * config_env.c - the environment's layer: IOTD_<SECTION>_<KEY> variables
 * over the file's values, each checked through the key table. A name in
 * one of iotd's sections that is no key is an error.
 */
#include "config.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "config_int.h"
#include "iotd.h"

static const char *env_get(char *const *envp, const char *name)
{
	size_t n = strlen(name);

	for (; envp && *envp; envp++)
		if (strncmp(*envp, name, n) == 0 && (*envp)[n] == '=')
			return *envp + n + 1;
	return NULL;
}

static bool env_in_our_sections(const char *var, size_t len)
{
	char prefix[32];

	for (size_t s = 0; s < N_SECTIONS; s++) {
		size_t plen = (size_t)snprintf(prefix, sizeof(prefix), "IOTD_%s_",
					       config_sections[s]);

		for (size_t c = 0; c < plen; c++)
			prefix[c] = (char)toupper((unsigned char)prefix[c]);
		if (len > plen && strncmp(var, prefix, plen) == 0)
			return true;
	}
	return false;
}

static bool env_is_key(const char *var, size_t len)
{
	char name[64];

	for (size_t i = 0; i < N_KEYS; i++) {
		key_env_name(&config_keys[i], name, sizeof(name));
		if (strlen(name) == len && strncmp(var, name, len) == 0)
			return true;
	}
	return false;
}

/*
 * IOTD_SERVER_* and the like are ours: a misspelt one is an error, not a
 * silently ignored setting. Other IOTD_* variables are left alone.
 */
static int check_env_names(struct load_ctx *ctx, char *const *envp)
{
	for (; envp && *envp; envp++) {
		size_t len = strcspn(*envp, "=");

		if (env_in_our_sections(*envp, len) && !env_is_key(*envp, len)) {
			set_err(ctx, "environment: %.*s: no such setting",
				(int)MIN(len, (size_t)SHOWN_MAX), *envp);
			return -1;
		}
	}
	return 0;
}

int load_env(struct load_ctx *ctx, char *const *envp)
{
	char name[64], why[160], buf[SHOWN_MAX + 4];

	if (check_env_names(ctx, envp) < 0)
		return -1;
	for (size_t i = 0; i < N_KEYS; i++) {
		const char *v = env_get(envp, key_env_name(&config_keys[i], name, sizeof(name)));

		if (!v)
			continue;
		if (key_apply(&config_keys[i], v, &ctx->cfg, why, sizeof(why)) < 0) {
			set_err(ctx, "environment: %s: invalid value '%s' (%s)", name,
				shown(v, buf, sizeof(buf)), why);
			return -1;
		}
		ctx->src[i] = SRC_ENV;
	}
	return 0;
}
