/* The body of a standalone program around a model compiled by kiln
   (kiln_codegen::cpu::aot::standalone_main): the generated part above
   defines PROGRAM, MODEL_RUN, N_INPUTS, N_OUTPUTS, INPUTS, OUTPUTS, USAGE,
   EXAMPLE and HELP. It reads each input from a .npy file the way `kiln run`
   does (versions 1 to 3, C order, either byte order, exact sizes), runs the
   model and writes each output to DIR/NAME.npy. */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", PROGRAM);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void help(const char *argv0) {
    printf("Usage: %s%s [-o DIR]\n\n", argv0, USAGE);
    fputs(HELP, stdout);
    printf("\nExample:\n  %s%s -o out\n", argv0, EXAMPLE);
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* A shape as NumPy writes it: (3, 5), (5,) or (). */
static char *shape_text(const unsigned long long *shape, int rank, char *buf, size_t n) {
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < rank && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%llu%s", shape[i],
                                 rank == 1 ? "," : (i + 1 < rank ? ", " : ""));
    if (used < n) snprintf(buf + used, n - used, ")");
    return buf;
}

/* The text of `key`'s value in an .npy header dict (the key quoted with '
   or "), copied into `out` (of `n` bytes); 0 where it is missing. */
static int header_value(const char *h, const char *key, char *out, size_t n) {
    char pat[40];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(h, pat);
    if (!p) {
        snprintf(pat, sizeof pat, "\"%s\"", key);
        p = strstr(h, pat);
    }
    if (!p) return 0;
    p += strlen(pat);
    while (is_space(*p)) p++;
    if (*p != ':') return 0;
    p++;
    while (is_space(*p)) p++;
    const char *end;
    if (*p == '(') {
        end = strchr(p, ')');
        if (!end) return 0;
        end++;
    } else if (*p == '\'' || *p == '"') {
        end = strchr(p + 1, *p);
        if (!end) return 0;
        end++;
    } else {
        end = p + strcspn(p, ",}");
    }
    while (end > p && is_space(end[-1])) end--;
    size_t len = (size_t)(end - p);
    if (len + 1 > n) return 0;
    memcpy(out, p, len);
    out[len] = 0;
    return 1;
}

#define MAX_RANK 64

static void *read_npy(const struct input *in, const char *path) {
    const char *name = in->name;
    FILE *f = fopen(path, "rb");
    if (!f) die("input '%s': cannot open %s: %s", name, path, strerror(errno));
    unsigned char pre[12];
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0)
        die("input '%s': %s is not an .npy file (bad magic)", name, path);
    size_t hlen;
    if (pre[6] == 1) {
        hlen = pre[8] | (size_t)pre[9] << 8;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) die("input '%s': %s has a truncated header", name, path);
        hlen = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    } else {
        die("input '%s': %s has unsupported .npy version %d.%d", name, path, pre[6], pre[7]);
    }
    if (hlen > 1 << 20) die("input '%s': %s has a header of %zu bytes", name, path, hlen);
    char *h = malloc(hlen + 1), *v = malloc(hlen + 1);
    if (!h || !v) die("input '%s': out of memory", name);
    if (fread(h, 1, hlen, f) != hlen) die("input '%s': %s has a truncated header", name, path);
    h[hlen] = 0;
    if (!header_value(h, "descr", v, hlen + 1)) die("input '%s': %s has no 'descr'", name, path);
    char d[32];
    size_t dl = strlen(v);
    if (dl >= 2 && (v[0] == '\'' || v[0] == '"') && v[dl - 1] == v[0]) {
        memmove(v, v + 1, dl - 2);
        v[dl - 2] = 0;
    }
    snprintf(d, sizeof d, "%s", v);
    int big = 0;
    const char *code = d;
    if (d[0] == '<' || d[0] == '|' || d[0] == '=') {
        code = d + 1;
    } else if (d[0] == '>') {
        big = 1;
        code = d + 1;
    }
    if (strcmp(code, in->code) != 0 && !(in->is_bool && strcmp(code, "?") == 0))
        die("input '%s': %s holds '%s' elements, the model takes '%s'", name, path, d, in->descr);
    if (!header_value(h, "fortran_order", v, hlen + 1))
        die("input '%s': %s has no 'fortran_order'", name, path);
    if (strcmp(v, "False") != 0)
        die("input '%s': %s is in Fortran order; save it with np.ascontiguousarray", name, path);
    if (!header_value(h, "shape", v, hlen + 1)) die("input '%s': %s has no 'shape'", name, path);
    unsigned long long fs[MAX_RANK];
    int frank = 0;
    const char *p = v;
    if (*p++ != '(') die("input '%s': %s has an invalid shape %s", name, path, v);
    for (;;) {
        while (is_space(*p)) p++;
        if (*p == ')') break;
        if (*p < '0' || *p > '9') die("input '%s': %s has an invalid shape %s", name, path, v);
        char *end;
        errno = 0;
        unsigned long long x = strtoull(p, &end, 10);
        if (errno) die("input '%s': %s has an invalid shape %s", name, path, v);
        if (frank == MAX_RANK) die("input '%s': %s has more than %d dims", name, path, MAX_RANK);
        fs[frank++] = x;
        p = end;
        if (*p == 'L') p++;
        while (is_space(*p)) p++;
        if (*p == ',') p++;
        else if (*p != ')') die("input '%s': %s has an invalid shape %s", name, path, v);
    }
    int same = frank == in->rank;
    for (int i = 0; same && i < in->rank; i++) same = fs[i] == in->shape[i];
    if (!same) {
        char got[MAX_RANK * 24 + 8];
        die("input '%s': %s has shape %s, the model takes %s", name, path,
            shape_text(fs, frank, got, sizeof got), in->shape_text);
    }
    free(h);
    free(v);
    size_t bytes = in->count * in->file_width;
    unsigned char *data = malloc(bytes ? bytes : 1);
    if (!data) die("input '%s': out of memory for %zu bytes", name, bytes);
    size_t got = fread(data, 1, bytes, f);
    if (got != bytes)
        die("input '%s': %s: shape %s of '%s' needs %zu data bytes, the file has %zu", name, path,
            in->shape_text, d, bytes, got);
    if (fgetc(f) != EOF)
        die("input '%s': %s: shape %s of '%s' needs %zu data bytes, the file has more", name, path,
            in->shape_text, d, bytes);
    fclose(f);
    if (big && in->file_width > 1) {
        for (size_t i = 0; i < bytes; i += in->file_width)
            for (size_t a = i, b = i + in->file_width - 1; a < b; a++, b--) {
                unsigned char t = data[a];
                data[a] = data[b];
                data[b] = t;
            }
    }
    if (in->is_bool) {
        for (size_t i = 0; i < bytes; i++)
            if (data[i] > 1) die("input '%s': %s holds a bool byte other than 0 and 1 (%d)", name, path, data[i]);
    }
    if (in->is_bf16) {
        /* .npy has no bfloat16: f32 values, rounded to nearest even. */
        uint16_t *out = (uint16_t *)data;
        for (size_t i = 0; i < in->count; i++) {
            uint32_t x;
            memcpy(&x, data + 4 * i, 4);
            if ((x & 0x7fffffffu) > 0x7f800000u) out[i] = (uint16_t)((x >> 16) | 0x40);
            else out[i] = (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
        }
    }
    return data;
}

/* Creates `dir` and its parents where missing (mkdir -p), and checks that
   files can be written there. */
static void make_dirs(const char *dir) {
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p) die("out of memory");
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST)
            die("-o %s: cannot create %s: %s", dir, p, strerror(errno));
        p[i] = c;
    }
    free(p);
    struct stat st;
    if (stat(dir, &st) != 0) die("-o %s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) die("-o %s: not a directory", dir);
    if (access(dir, W_OK | X_OK) != 0) die("-o %s: cannot write there: %s", dir, strerror(errno));
}

static void write_npy(const char *path, const struct output *out, const void *data) {
    FILE *f = fopen(path, "wb");
    if (!f) die("output '%s': cannot write %s: %s", out->name, path, strerror(errno));
    int ok = fwrite(out->header, 1, out->header_len, f) == out->header_len;
    if (out->is_bf16) {
        /* .npy has no bfloat16: written widened to f32 (exactly), as kiln does. */
        const uint16_t *x = data;
        for (size_t i = 0; ok && i < out->count; i++) {
            uint32_t w = (uint32_t)x[i] << 16;
            ok = fwrite(&w, 4, 1, f) == 1;
        }
    } else {
        ok = ok && fwrite(data, 1, out->bytes, f) == out->bytes;
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) die("output '%s': writing %s failed: %s", out->name, path, strerror(errno));
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* --time: 5 warm runs after the first, then runs for `seconds` (10 to
   100000), their times sorted; one line of JSON on stdout. */
static void time_runs(const void *const *inputs, void *const *outputs, double first_ms, double seconds) {
    enum { MIN_RUNS = 10, MAX_RUNS = 100000 };
    for (int i = 0; i < 5; i++)
        if (MODEL_RUN(inputs, outputs) != 0) die("%s", kiln_rt_last_error());
    double *t = malloc(MAX_RUNS * sizeof *t);
    if (!t) die("--time: out of memory");
    int n = 0;
    double start = now_ms();
    while (n < MAX_RUNS && (n < MIN_RUNS || now_ms() - start < seconds * 1e3)) {
        double t0 = now_ms();
        if (MODEL_RUN(inputs, outputs) != 0) die("%s", kiln_rt_last_error());
        t[n++] = now_ms() - t0;
    }
    qsort(t, (size_t)n, sizeof *t, by_value);
    printf("{\"ok\": true, \"first_run_ms\": %.6f, \"median_ms\": %.6f, \"p90_ms\": %.6f, \"runs\": %d}\n",
           first_ms, t[(n - 1) / 2], t[(int)((n - 1) * 0.9)], n);
    free(t);
}

int main(int argc, char **argv) {
    const char *files[N_INPUTS + 1] = {0};
    const char *dir = NULL;
    double seconds = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            help(argv[0]);
            return 0;
        }
        if (strcmp(a, "--time") == 0) {
            char *end = NULL;
            if (i + 1 < argc) seconds = strtod(argv[i + 1], &end);
            if (i + 1 >= argc || end == argv[i + 1] || *end || !(seconds > 0 && seconds <= 1e6))
                die("--time needs a number of seconds above 0: --time SECONDS");
            i++;
            continue;
        }
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (i + 1 >= argc || argv[i + 1][0] == 0) die("%s needs a directory: -o DIR", a);
            dir = argv[++i];
            continue;
        }
        int k = -1;
        size_t best = 0;
        for (int j = 0; j < N_INPUTS; j++) {
            size_t n = strlen(INPUTS[j].name);
            if (strncmp(a, INPUTS[j].name, n) == 0 && a[n] == '=' && (k < 0 || n > best)) {
                k = j;
                best = n;
            }
        }
        if (k < 0)
            die("unknown argument '%s' (usage: %s%s [-o DIR]; see %s --help)", a, argv[0], USAGE,
                argv[0]);
        if (files[k]) die("input '%s' is given twice", INPUTS[k].name);
        files[k] = a + best + 1;
        if (!*files[k]) die("input '%s': no file after '=' (%s=FILE.npy)", INPUTS[k].name, INPUTS[k].name);
    }
    const void *inputs[N_INPUTS + 1] = {0};
    for (int k = 0; k < N_INPUTS; k++)
        if (!files[k])
            die("input '%s' was not given (add %s=FILE.npy; see %s --help)", INPUTS[k].name,
                INPUTS[k].name, argv[0]);
    for (int k = 0; k < N_INPUTS; k++) inputs[k] = read_npy(&INPUTS[k], files[k]);
    if (dir) make_dirs(dir);
    void *outputs[N_OUTPUTS + 1] = {0};
    for (int o = 0; o < N_OUTPUTS; o++) {
        size_t bytes = OUTPUTS[o].count * OUTPUTS[o].width;
        outputs[o] = malloc(bytes ? bytes : 1);
        if (!outputs[o]) die("output '%s': out of memory for %zu bytes", OUTPUTS[o].name, bytes);
    }
    double t0 = now_ms();
    if (MODEL_RUN(inputs, outputs) != 0) die("%s", kiln_rt_last_error());
    double first_ms = now_ms() - t0;
    if (seconds > 0) time_runs(inputs, outputs, first_ms, seconds);
    for (int o = 0; o < N_OUTPUTS; o++) {
        char path[4096];
        size_t dl = dir ? strlen(dir) : 0;
        int n = dir ? snprintf(path, sizeof path, "%s%s%s", dir, dir[dl - 1] == '/' ? "" : "/", OUTPUTS[o].file)
                    : snprintf(path, sizeof path, "%s", OUTPUTS[o].file);
        if (n < 0 || (size_t)n >= sizeof path) die("output '%s': the path under %s is too long", OUTPUTS[o].name, dir);
        write_npy(path, &OUTPUTS[o], outputs[o]);
        printf("wrote %s %s\n", path, OUTPUTS[o].type);
    }
    return 0;
}
