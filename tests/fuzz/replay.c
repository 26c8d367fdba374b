/* replay.c - runs a fuzz target over every file of its corpus, without libFuzzer (for ctest). */
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    DIR *d = opendir(argv[1]);
    if (!d) {
        perror(argv[1]);
        return 1;
    }
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", argv[1], de->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) {
            perror(path);
            closedir(d);
            return 1;
        }
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0, r;
        do {
            if (cap - len < 4096) {
                cap = cap ? cap * 2 : 8192;
                buf = realloc(buf, cap);
                if (!buf)
                    abort();
            }
            r = fread(buf + len, 1, cap - len, f);
            len += r;
        } while (r > 0);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        n++;
    }
    closedir(d);
    if (n == 0) {
        fprintf(stderr, "%s: empty corpus\n", argv[1]);
        return 1;
    }
    printf("%zu inputs replayed\n", n);
    return 0;
}
