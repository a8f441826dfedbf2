/* Partial JPEG decode over libjpeg-turbo's libjpeg API, loaded by shards/jpegturbo.py (ctypes).
 *
 * sf_decode_crop decodes, at DCT scale num/8, only the output rows top..top+height-1 and the
 * iMCU columns that cover left..left+width-1 (jpeg_crop_scanline), skips the rows above
 * (jpeg_skip_scanlines: entropy-decoded, never dequantised, transformed or colour-converted)
 * and stops reading after the last row it needs (jpeg_abort_decompress): the rows below are
 * never entropy-decoded at all. Output is RGB, written row by row at out + row * out_stride.
 *
 * sf_scan decodes a whole image at 1/8 scale into a scratch row (the entropy decoder runs over
 * every block; the IDCT keeps only the DC term) and reports the output size and libjpeg's
 * warnings (the first one's text in msg): what a full decode would report, for a fraction of
 * its cost.
 *
 * Both return 0 on success and write libjpeg's message into msg otherwise. Fatal libjpeg errors
 * longjmp back here; warnings are counted, never printed. No global state: each call owns its
 * decompressor, so calls from several threads at once are safe. Callers release the GIL
 * (ctypes does).
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

struct sf_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int warnings;
    int ran_out; /* JWRN_JPEG_EOF: libjpeg wanted bytes past the end (a suspending source,
                    as OpenCV's is, fails the decode there) */
    char first_warning[JMSG_LENGTH_MAX];
};

static void sf_error_exit(j_common_ptr cinfo) {
    struct sf_error *err = (struct sf_error *)cinfo->err;
    longjmp(err->jump, 1);
}

/* Counts every warning and keeps the first one's text, which is all that libjpeg's default
 * handler prints (and so all that a caller of OpenCV ever sees). */
static void sf_emit_message(j_common_ptr cinfo, int level) {
    struct sf_error *err = (struct sf_error *)cinfo->err;
    if (level < 0) {
        if (err->warnings == 0) {
            (*cinfo->err->format_message)(cinfo, err->first_warning);
        }
        err->warnings++;
        if (err->pub.msg_code == JWRN_JPEG_EOF) {
            err->ran_out++;
        }
    }
}

static void sf_copy_message(j_decompress_ptr cinfo, char *msg, int msglen) {
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)((j_common_ptr)cinfo, text);
    if (msglen > 0) {
        strncpy(msg, text, (size_t)msglen - 1);
        msg[msglen - 1] = '\0';
    }
}

static void sf_init(j_decompress_ptr cinfo, struct sf_error *err) {
    cinfo->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = sf_error_exit;
    err->pub.emit_message = sf_emit_message;
    err->warnings = 0;
    err->ran_out = 0;
    err->first_warning[0] = '\0';
}

/* geometry[0..4] receives: scaled image width, scaled image height, the first decoded column
 * (left rounded down to an iMCU boundary), the number of decoded columns, and the number of
 * warnings met in the part that was read. */
int sf_decode_crop(const unsigned char *data, unsigned long size, int num, int top, int left,
                   int height, int width, unsigned char *out, int out_stride, int *geometry,
                   char *msg, int msglen) {
    struct jpeg_decompress_struct cinfo;
    struct sf_error err;
    JDIMENSION xoffset, cols;
    int row;

    sf_init(&cinfo, &err);
    if (setjmp(err.jump)) {
        sf_copy_message(&cinfo, msg, msglen);
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.scale_num = (unsigned int)num;
    cinfo.scale_denom = 8;
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    geometry[0] = (int)cinfo.output_width;
    geometry[1] = (int)cinfo.output_height;
    if (top < 0 || left < 0 || height < 1 || width < 1 ||
        (JDIMENSION)(top + height) > cinfo.output_height ||
        (JDIMENSION)(left + width) > cinfo.output_width || cinfo.output_components != 3) {
        snprintf(msg, (size_t)msglen, "crop %dx%d+%d+%d outside the %ux%u image (%d components)",
                 width, height, left, top, cinfo.output_width, cinfo.output_height,
                 cinfo.output_components);
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    xoffset = (JDIMENSION)left;
    cols = (JDIMENSION)(left + width) - xoffset;
    jpeg_crop_scanline(&cinfo, &xoffset, &cols);
    geometry[2] = (int)xoffset;
    geometry[3] = (int)cols;
    if ((int)cols * 3 > out_stride) {
        snprintf(msg, (size_t)msglen, "row of %u columns exceeds the %d-byte stride", cols,
                 out_stride);
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    if (top > 0) {
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
    }
    for (row = 0; row < height; row++) {
        JSAMPROW line = out + (size_t)row * (size_t)out_stride;
        if (jpeg_read_scanlines(&cinfo, &line, 1) != 1) {
            snprintf(msg, (size_t)msglen, "no scanline %d", top + row);
            jpeg_destroy_decompress(&cinfo);
            return 2;
        }
    }
    geometry[4] = err.warnings;
    if (err.warnings && msglen > 0) {
        strncpy(msg, err.first_warning, (size_t)msglen - 1);
        msg[msglen - 1] = '\0';
    }
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

/* geometry[0..3] receives: width and height at 1/8 scale, the number of warnings, and how many
 * of them say the data ran out; msg the first warning's text. */
int sf_scan(const unsigned char *data, unsigned long size, int *geometry, char *msg,
            int msglen) {
    struct jpeg_decompress_struct cinfo;
    struct sf_error err;
    JSAMPROW line = NULL;

    sf_init(&cinfo, &err);
    if (setjmp(err.jump)) {
        sf_copy_message(&cinfo, msg, msglen);
        free(line);
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.scale_num = 1;
    cinfo.scale_denom = 8;
    jpeg_start_decompress(&cinfo);
    line = malloc((size_t)cinfo.output_width * (size_t)cinfo.output_components);
    if (line == NULL) {
        snprintf(msg, (size_t)msglen, "out of memory");
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        jpeg_read_scanlines(&cinfo, &line, 1);
    }
    jpeg_finish_decompress(&cinfo);
    geometry[0] = (int)cinfo.output_width;
    geometry[1] = (int)cinfo.output_height;
    geometry[2] = err.warnings;
    geometry[3] = err.ran_out;
    if (err.warnings && msglen > 0) {
        strncpy(msg, err.first_warning, (size_t)msglen - 1);
        msg[msglen - 1] = '\0';
    }
    free(line);
    jpeg_destroy_decompress(&cinfo);
    return 0;
}
