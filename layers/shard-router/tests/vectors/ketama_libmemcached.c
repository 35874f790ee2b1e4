/* Prints the server libmemcached picks for each key, for each ketama flavour and server set
   read from the cases file (argv[1]). Output lines: "<flavour> <config> <digits>", one base-36
   digit per key (the server's position in the config), keys in the order of the cases file's
   "keys" line, then key-0 .. key-499; and "hash <function> <key> <u32>" for the listed keys. */
#include <libmemcached/memcached.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SERVERS 36
#define MAX_KEYS 1024

struct server { char host[64]; unsigned port; unsigned weight; };
struct config { char name[32]; int n; struct server s[MAX_SERVERS]; };

static struct config configs[16];
static int nconfigs;
static char *keys[MAX_KEYS];
static int nkeys;

static void read_cases(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) { perror(path); exit(1); }
  static char line[8192];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    char *tok = strtok(line, " ");
    if (!tok || tok[0] == '#') continue;
    if (!strcmp(tok, "config")) {
      struct config *c = &configs[nconfigs++];
      strcpy(c->name, strtok(NULL, " "));
      while ((tok = strtok(NULL, " "))) {
        struct server *s = &c->s[c->n++];
        char *colon = strrchr(tok, ':'), *eq = strchr(tok, '=');
        *colon = 0; *eq = 0;
        strcpy(s->host, tok);
        s->port = (unsigned) atoi(colon + 1);
        s->weight = (unsigned) atoi(eq + 1);
      }
    } else if (!strcmp(tok, "keys")) {
      while ((tok = strtok(NULL, " "))) keys[nkeys++] = strdup(tok);
    }
  }
  fclose(f);
  for (int i = 0; i < 500; i++) {
    char buf[32];
    snprintf(buf, sizeof buf, "key-%d", i);
    keys[nkeys++] = strdup(buf);
  }
}

enum flavour { WEIGHTED, UNWEIGHTED_DEFAULT_HASH, UNWEIGHTED_MD5 };
static const char *names[] = {"libmemcached_weighted", "libmemcached_oaat", "libmemcached_md5"};

static void run(enum flavour fl, const struct config *c) {
  memcached_st *m = memcached_create(NULL);
  if (!m) exit(2);
  memcached_return_t rc = MEMCACHED_SUCCESS;
  switch (fl) {
  case WEIGHTED: rc = memcached_behavior_set(m, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1); break;
  case UNWEIGHTED_DEFAULT_HASH: rc = memcached_behavior_set(m, MEMCACHED_BEHAVIOR_KETAMA, 1); break;
  case UNWEIGHTED_MD5:
    rc = memcached_behavior_set(m, MEMCACHED_BEHAVIOR_KETAMA, 1);
    if (rc == MEMCACHED_SUCCESS) rc = memcached_behavior_set(m, MEMCACHED_BEHAVIOR_HASH, MEMCACHED_HASH_MD5);
    break;
  }
  if (rc != MEMCACHED_SUCCESS) { fprintf(stderr, "behavior: %s\n", memcached_strerror(m, rc)); exit(3); }
  for (int i = 0; i < c->n; i++) {
    rc = memcached_server_add_with_weight(m, c->s[i].host, (in_port_t) c->s[i].port, c->s[i].weight);
    if (rc != MEMCACHED_SUCCESS) { fprintf(stderr, "add: %s\n", memcached_strerror(m, rc)); exit(4); }
  }
  printf("%s %s ", names[fl], c->name);
  for (int k = 0; k < nkeys; k++) {
    uint32_t at = memcached_generate_hash(m, keys[k], strlen(keys[k]));
    const memcached_instance_st *inst = memcached_server_instance_by_position(m, at);
    /* Map back to the config's position by host and port (not trusting the index). */
    int pos = -1;
    for (int i = 0; i < c->n; i++)
      if (!strcmp(memcached_server_name(inst), c->s[i].host) && memcached_server_port(inst) == c->s[i].port) pos = i;
    if (pos < 0) { fprintf(stderr, "unknown server\n"); exit(5); }
    putchar("0123456789abcdefghijklmnopqrstuvwxyz"[pos]);
  }
  printf("\n");
  memcached_free(m);
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: %s CASES\n", argv[0]); return 1; }
  read_cases(argv[1]);
  for (int fl = WEIGHTED; fl <= UNWEIGHTED_MD5; fl++)
    for (int c = 0; c < nconfigs; c++) run((enum flavour) fl, &configs[c]);
  for (int k = 0; k < nkeys - 500; k++) {
    printf("hash md5 %s %u\n", keys[k], memcached_generate_hash_value(keys[k], strlen(keys[k]), MEMCACHED_HASH_MD5));
    printf("hash one_at_a_time %s %u\n", keys[k], memcached_generate_hash_value(keys[k], strlen(keys[k]), MEMCACHED_HASH_DEFAULT));
  }
  return 0;
}
