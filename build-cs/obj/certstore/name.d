build-cs/obj/certstore/name.o: certstore/name.c certstore/internal.h \
 certstore/certstore.h
certstore/internal.h:
certstore/certstore.h:
