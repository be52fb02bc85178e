build-cs/obj/certstore/select.o: certstore/select.c certstore/internal.h \
 certstore/certstore.h
certstore/internal.h:
certstore/certstore.h:
