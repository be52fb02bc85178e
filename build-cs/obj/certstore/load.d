build-cs/obj/certstore/load.o: certstore/load.c certstore/internal.h \
 certstore/certstore.h
certstore/internal.h:
certstore/certstore.h:
