build-cs/obj/certstore/index.o: certstore/index.c certstore/internal.h \
 certstore/certstore.h
certstore/internal.h:
certstore/certstore.h:
